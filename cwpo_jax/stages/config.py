"""Config validation before any compute: one line per problem, naming the field."""
from __future__ import annotations

import os

import ml_collections

from cwpo_jax import confidence, losses
from cwpo_jax.data import readers
from cwpo_jax.models.layers import REMAT_POLICIES
from cwpo_jax.stages.defaults import defaults
from cwpo_jax.stages.methods import METHODS as METHOD_TABLE

METHODS = tuple(METHOD_TABLE)
PAIR_RULES = ("first_two", "best_vs_random", "best_vs_rest")


class ConfigError(ValueError):
    pass


def _unknown_keys(cfg, reference, prefix=""):
    for key in cfg.keys():
        path = f"{prefix}{key}"
        if key not in reference:
            yield path
        elif isinstance(cfg[key], ml_collections.ConfigDict) and isinstance(
                reference[key], ml_collections.ConfigDict):
            yield from _unknown_keys(cfg[key], reference[key], path + ".")


def data_columns(cfg) -> dict[str, str]:
    """data.columns without the unset ("") entries: the mapping read_preferences takes."""
    return {k: v for k, v in cfg.data.columns.items() if v}


def eval_judge(cfg) -> str:
    """The judge of GRA: evaluate.gold_judge, or data.gold_judge when that is unset."""
    return cfg.evaluate.gold_judge or cfg.data.gold_judge


def pool_seed(cfg) -> int:
    """The seed that fixes the preference pool: data.pool_seed, or the run's seed when -1."""
    return cfg.data.pool_seed if cfg.data.pool_seed >= 0 else cfg.seed


def run_name(labelled_fraction: float, seed: int) -> str:
    return f"frac{labelled_fraction:g}_seed{seed}"


def sweep_run_config(cfg, labelled_fraction: float, seed: int) -> ml_collections.ConfigDict:
    """One sweep run: a normal run in its own folder with its own labelled share and seed, on
    the sweep's pool (pool_seed(cfg)), so the sampled dataset is built once for all runs."""
    run = cfg.copy_and_resolve_references()
    run.output_dir = os.path.join(cfg.output_dir, run_name(labelled_fraction, seed))
    run.seed = int(seed)
    run.data.labelled_fraction = float(labelled_fraction)
    run.data.pool_seed = pool_seed(cfg)
    run.sweep.runs = ()
    return run


def _sweep_errors(cfg, num_devices) -> list[str]:
    """Each sweep entry must be a (labelled_fraction, seed) pair, listed once, whose run
    config is valid; problems of a run are reported under its entry."""
    errors, seen = [], set()
    for i, entry in enumerate(cfg.sweep.runs):
        field = f"sweep.runs[{i}]"
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2
                and isinstance(entry[0], (int, float)) and isinstance(entry[1], int)
                and not isinstance(entry[1], bool) and entry[1] >= 0):
            errors.append(f"{field}: {entry!r} is not a (labelled_fraction, seed >= 0) pair")
            continue
        if run_name(*entry) in seen:
            errors.append(f"{field}: {tuple(entry)} is listed twice")
        seen.add(run_name(*entry))
        try:
            validate(sweep_run_config(cfg, *entry), num_devices=num_devices)
        except ConfigError as e:
            errors += [f"{field} {tuple(entry)}: {line}" for line in str(e).splitlines()]
    return errors


def validate(cfg: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Raise ConfigError listing every invalid field (unknown keys, ranges, divisibility)."""
    errors = [f"{k}: unknown config key" for k in _unknown_keys(cfg, defaults())]
    if cfg.sweep.runs and not errors:
        errors += _sweep_errors(cfg, num_devices)
    if errors:
        raise ConfigError("\n".join(errors))

    def check(ok, field, message):
        if not ok:
            errors.append(f"{field}: {message}")

    check(bool(cfg.output_dir), "output_dir", "is required (--config.output_dir=DIR)")
    check("://" not in cfg.output_dir, "output_dir",
          f"{cfg.output_dir!r} is an object-store URL; the run folder must be a path on a "
          "filesystem every host mounts (NFS, Filestore, Lustre): token stores are memory-mapped "
          "and checkpoints written in place")
    _check_data(cfg.data, check, errors)
    _check_align(cfg.align, cfg.data, check)
    _check_score(cfg.score, check)
    for name in TRAINED:
        _check_train(cfg[name].train, f"{name}.train", check)
    _check_annotator(cfg.annotator, check)
    _check_sft(cfg.sft, check)
    _check_evaluate(cfg.evaluate, check)
    check(cfg.data.source != "file" or bool(cfg.evaluate.gold_judge), "evaluate.gold_judge",
          "is required for data.source=file: name the judge of GRA (reward_model:PATH, vader, "
          "lexicon) or none (no GRA; the aligned models and training metrics are still written)")
    check(not (cfg.sweep.runs and eval_judge(cfg) == "none"), "sweep.runs",
          "a sweep aggregates GRA, which evaluate.gold_judge=none does not measure")
    _check_mesh(cfg, num_devices, check, errors)
    if cfg.sweep.runs and not errors:
        errors += _sweep_errors(cfg, num_devices)
    if errors:
        raise ConfigError("\n".join(errors))


TRAINED = ("annotator", "sft", "align")  # the sections with a train section (train_section)


def _check_data(d, check, errors) -> None:
    check(d.source in ("file", "synthetic", "demo"), "data.source",
          f"{d.source!r} is not one of file, synthetic, demo")
    check(d.source != "file" or bool(d.path), "data.path", "is required when data.source=file")
    if d.source == "file":
        try:
            readers.check_format(d.format, {k: v for k, v in d.columns.items() if v})
        except ValueError as e:
            errors.append(f"data.{'format' if d.format not in readers.FORMATS else 'columns'}: "
                          f"{e}")
    check(d.source == "file" or not any(d.columns.values()), "data.columns",
          f"names a file's columns, but data.source={d.source} reads no file")
    check(0 < d.labelled_fraction < 1, "data.labelled_fraction",
          f"{d.labelled_fraction} is not in (0, 1)")
    check(0 < d.eval_fraction < 1 and d.labelled_fraction + d.eval_fraction < 1,
          "data.eval_fraction", f"{d.eval_fraction} must be in (0, 1) and leave room for the "
          f"unlabelled share next to labelled_fraction {d.labelled_fraction}")
    check(0 < d.max_prompt_len < d.max_len, "data.max_prompt_len",
          f"need 0 < max_prompt_len ({d.max_prompt_len}) < max_len ({d.max_len})")
    check(d.source == "file" or d.rater_temperature > 0, "data.rater_temperature",
          "must be > 0 for simulated raters")
    check(d.responses_per_prompt >= 2, "data.responses_per_prompt",
          f"must be >= 2, got {d.responses_per_prompt}")
    check(d.pair_rule in PAIR_RULES, "data.pair_rule",
          f"{d.pair_rule!r} is not one of {', '.join(PAIR_RULES)}")
    check(d.pool_seed >= -1, "data.pool_seed", f"must be >= 0, or -1 for the run's seed, got "
                                                f"{d.pool_seed}")
    check(d.num_pairs >= 0, "data.num_pairs", f"must be >= 0, got {d.num_pairs}")
    check(d.source == "file" or d.num_pairs > 0, "data.num_pairs",
          f"must be > 0 for data.source={d.source}")
    if d.source != "file" and d.num_pairs > 0 and not errors:
        n = d.num_pairs  # one prompt per generated pair: split sizes are known now
        n_eval = round(n * d.eval_fraction)
        n_labelled = round(n * d.labelled_fraction)
        for field, size, what in (("data.eval_fraction", n_eval, "eval"),
                                  ("data.labelled_fraction", n_labelled, "labelled"),
                                  ("data.labelled_fraction", n - n_eval - n_labelled,
                                   "unlabelled")):
            check(size > 0, field, f"leaves the {what} split of {n} pairs empty "
                                   f"(labelled {d.labelled_fraction}, eval {d.eval_fraction})")


def _check_align(a, d, check) -> None:
    try:
        names = losses.loss_names(a.loss)
    except ValueError as e:
        names = ()
        check(False, "align.loss", str(e))
    check(a.beta > 0, "align.beta", f"must be > 0, got {a.beta}")
    check(0 <= a.label_smoothing < 0.5, "align.label_smoothing",
          f"must be in [0, 0.5), got {a.label_smoothing}")
    _check_loss_options(a, names, check)
    check(a.confidence in confidence.CONFIDENCE_KINDS, "align.confidence",
          f"{a.confidence!r} not in {confidence.CONFIDENCE_KINDS}")
    check(0 < a.top_fraction <= 1, "align.top_fraction", f"must be in (0, 1], got {a.top_fraction}")
    check(len(a.methods) > 0, "align.methods", "is empty")
    for m in a.methods:
        check(m in METHODS, "align.methods", f"{m!r} not in {METHODS}")
    for m in a.methods:
        check(not (m in METHOD_TABLE and METHOD_TABLE[m].needs_gold and d.source == "file"),
              "align.methods", f"{m!r} needs gold scores, which only the controlled settings "
              "write (data.source=synthetic or demo); remove it for data.source=file")
    check(a.chunk_size >= 0, "align.chunk_size", "must be >= 0")
    check(a.logprob_batch_size > 0, "align.logprob_batch_size",
          f"must be > 0, got {a.logprob_batch_size}")
    check(a.lora_rank >= 0, "align.lora_rank", f"must be >= 0, got {a.lora_rank}")
    check(0 <= a.lora_dropout < 1, "align.lora_dropout", f"must be in [0, 1), got {a.lora_dropout}")
    check(a.max_pairs >= 0, "align.max_pairs", f"must be >= 0, got {a.max_pairs}")
    check(a.frozen_cache_gb >= 0, "align.frozen_cache_gb", f"must be >= 0, got {a.frozen_cache_gb}")
    check(all(isinstance(i, int) for i in a.lora_layers), "align.lora_layers",
          f"must be layer indices (ints), got {a.lora_layers!r}")


def _check_loss_options(a, names, check) -> None:
    """The options of align.loss (names: its resolved losses, () when it is invalid)."""
    check(not a.loss_weights or len(a.loss_weights) == len(names), "align.loss_weights",
          f"{tuple(a.loss_weights)} must give one weight per loss of {a.loss!r}")
    check(all(isinstance(w, (int, float)) and w >= 0 for w in a.loss_weights),
          "align.loss_weights", f"must be numbers >= 0, got {tuple(a.loss_weights)}")
    check(a.discopop_tau > 0, "align.discopop_tau", f"must be > 0, got {a.discopop_tau}")
    check(a.f_divergence_type in losses.F_DIVERGENCES, "align.f_divergence_type",
          f"{a.f_divergence_type!r} not in {losses.F_DIVERGENCES}")
    check(a.f_divergence_type == "reverse_kl" or set(names) <= losses.F_DIVERGENCE_LOSSES,
          "align.f_divergence_type", f"{a.f_divergence_type} needs losses among "
          f"{sorted(losses.F_DIVERGENCE_LOSSES)}, not {a.loss!r}")
    check(0 <= a.ld_alpha <= 1, "align.ld_alpha", f"must be in [0, 1], got {a.ld_alpha}")
    check("exo_pair" not in names or a.label_smoothing > 0, "align.label_smoothing",
          "exo_pair needs label_smoothing > 0 (the EXO paper suggests 1e-3)")
    batch = sorted(losses.BATCH_LOSSES & set(names))
    if batch:
        weighted = [m for m in a.methods if m in METHOD_TABLE and METHOD_TABLE[m].weighting != "one"]
        check(not weighted, "align.loss", f"{batch[0]} sorts the batch, so its rows are not "
              f"pairs and cannot take the per-pair weights of align.methods {weighted}")
        check(not a.use_weighting, "align.use_weighting",
              f"WPO's per-pair weights cannot apply to {batch[0]}, which sorts the batch")


def _check_score(s, check) -> None:
    check(s.tau > 0, "score.tau", f"must be > 0, got {s.tau}")
    check(s.batch_size > 0, "score.batch_size", f"must be > 0, got {s.batch_size}")
    check(s.max_segments > 0, "score.max_segments", f"must be > 0, got {s.max_segments}")


def _check_train(t, field, check) -> None:
    check(t.learning_rate > 0, f"{field}.learning_rate", "must be > 0")
    check(t.batch_size > 0 and t.micro_batches > 0 and t.batch_size % t.micro_batches == 0,
          f"{field}.batch_size", f"{t.batch_size} is not a positive multiple of micro_batches "
          f"{t.micro_batches}")
    check(t.epochs > 0 or t.max_steps > 0, f"{field}.epochs", "epochs or max_steps must be > 0")
    check(t.compute_dtype in ("float32", "bfloat16"), f"{field}.compute_dtype",
          f"{t.compute_dtype!r} is not float32 or bfloat16")
    check(t.frozen_dtype in ("float32", "bfloat16"), f"{field}.frozen_dtype",
          f"{t.frozen_dtype!r} is not float32 or bfloat16")
    check(t.remat in REMAT_POLICIES, f"{field}.remat",
          f"{t.remat!r} is not one of {', '.join(REMAT_POLICIES)}")
    check(t.schedule in ("cosine", "constant"), f"{field}.schedule",
          f"{t.schedule!r} is not cosine or constant")
    check(t.warmup_steps >= 0, f"{field}.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
    check(t.max_steps >= 0, f"{field}.max_steps", f"must be >= 0, got {t.max_steps}")
    check(t.weight_decay >= 0, f"{field}.weight_decay", f"must be >= 0, got {t.weight_decay}")
    check(t.grad_clip >= 0, f"{field}.grad_clip", f"must be >= 0, got {t.grad_clip}")
    check(t.log_every > 0, f"{field}.log_every", f"must be > 0, got {t.log_every}")
    check(t.save_every >= 0, f"{field}.save_every", f"must be >= 0 (0: only at the end), got "
                                                    f"{t.save_every}")
    check(t.keep_checkpoints > 0, f"{field}.keep_checkpoints",
          f"must be > 0, got {t.keep_checkpoints}")


def _check_annotator(a, check) -> None:
    check(bool(a.model), "annotator.model", "is required")
    check(a.pooling in ("", "mean", "cls", "pooler"), "annotator.pooling",
          f"{a.pooling!r} is not one of '', mean, cls, pooler")


def _check_sft(s, check) -> None:
    check(bool(s.model), "sft.model", "is required")
    check(s.chunk_size >= 0, "sft.chunk_size", "must be >= 0")


def _check_evaluate(e, check) -> None:
    check(e.temperature >= 0, "evaluate.temperature", "must be >= 0")
    check(0 < e.top_p <= 1, "evaluate.top_p", f"must be in (0, 1], got {e.top_p}")
    check(e.max_new_tokens > 0, "evaluate.max_new_tokens", "must be > 0")
    check(e.batch_size > 0, "evaluate.batch_size", f"must be > 0, got {e.batch_size}")
    check(e.samples_per_prompt > 0, "evaluate.samples_per_prompt",
          f"must be > 0, got {e.samples_per_prompt}")
    check(e.heldout_pairs >= 0, "evaluate.heldout_pairs", f"must be >= 0, got {e.heldout_pairs}")


def _check_mesh(cfg, num_devices, check, errors) -> None:
    """Mesh sizes against the devices present, then every batch against the data-parallel
    size (only once everything else is valid: the sizes it divides by come from there)."""
    mesh = cfg.mesh
    sizes = [mesh.data, mesh.fsdp, mesh.tensor]
    check(all(s == -1 or s > 0 for s in sizes) and sizes.count(-1) <= 1, "mesh",
          f"sizes {sizes} must be positive, with at most one -1")
    if num_devices is not None and sizes.count(-1) == 0:
        total = mesh.data * mesh.fsdp * mesh.tensor
        check(total <= num_devices, "mesh", f"{total} devices requested, {num_devices} present")
    if num_devices is not None and sizes.count(-1) == 1 and not errors:
        fixed = -mesh.data * mesh.fsdp * mesh.tensor  # product of the other two axes
        check(num_devices % fixed == 0, "mesh",
              f"sizes {sizes}: the fixed axes need {fixed} devices, which does not divide the "
              f"{num_devices} present")
    if num_devices is None or errors:
        return
    fixed = -(mesh.data * mesh.fsdp * mesh.tensor) if -1 in sizes else 1
    data, fsdp, _ = [num_devices // fixed if s == -1 else s for s in sizes]
    data_parallel = data * fsdp
    for name in TRAINED:
        t = cfg[name].train
        micro = t.batch_size // t.micro_batches
        check(micro % data_parallel == 0, f"{name}.train.batch_size",
              f"micro-batch {micro} is not divisible by the data-parallel size "
              f"{data_parallel} (mesh data x fsdp)")
    # Scoring and log-prob passes put both responses of their batch's pairs in one batch.
    for field, pairs, what in (("score.batch_size", cfg.score.batch_size, "scoring"),
                               ("align.logprob_batch_size", cfg.align.logprob_batch_size,
                                "log-prob")):
        check(2 * pairs % data_parallel == 0, field,
              f"2 x {pairs} rows per {what} batch are not divisible by the data-parallel size "
              f"{data_parallel} (mesh data x fsdp)")
