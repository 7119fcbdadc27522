"""Stage 4, align: preference optimisation of the strong model, one run per method.

One run per align.methods entry; what each method trains on (labels, weights, which pairs) is
its entry in stages/methods.py.
Before any training, align/label_quality.json records how good each method's labels are by
gold (evaluation.label_quality), from labels, weights and gold alone.
Any loss of losses.py (align.loss: our names or TRL's loss_type names, one or a weighted
mixture with align.loss_weights; f-divergences, ld_alpha and WPO's use_weighting as in TRL's
DPOTrainer; losses.pair_loss_fn). With align.packed_pairs each pair is one packed row (prompt
+ chosen + rejected, the prompt run once) and only response positions go through the LM head;
the log-probs equal those of separate chosen/rejected rows (tests/engine/test_packed_pairs.py).
The pool's token ids are a token store (data/token_store.py) under tokens/, memory-mapped.
Reference log-probs come from one jitted pass over the pool,
cached on disk under refcache/ by a content hash of (the store's key, reference checkpoint,
and align.ld_alpha when it is not 1),
and reused by every method and rerun; the reference model is freed before training starts.
"""
from __future__ import annotations

import functools
import os

import jax
import numpy as np
from flax import nnx

from cwpo_jax import losses, models, scores
from cwpo_jax.data.splits import seeded_rank
from cwpo_jax.evaluation import label_quality
from cwpo_jax.io_utils import atomic_open, hash_bytes, hash_path, write_json
from cwpo_jax.stages import common, frozen_layers, run_folder
from cwpo_jax.stages.methods import METHODS, targets
from cwpo_jax.stages.pair_passes import (
    pair_batches,
    pair_logprobs_pass,
    place_residuals,
    shares_prefix,
)
from cwpo_jax.stages.run_folder import annotator_identity, reference_path, scores_path
from cwpo_jax.train import tasks
from cwpo_jax.train.fit import fit
from cwpo_jax.train.flops import train_flops_per_token
from cwpo_jax.train.hosts import log

STAGE = "align"


def reference_logprobs(cfg, ids, tokenized, ref_path: str, tok, *, model=None,
                       start_layer: int = 0, residuals=None) -> tuple[np.ndarray, np.ndarray]:
    """Summed reference log-probs of stored chosen and rejected responses, [N] each; cached.
    tokenized: the pool's TokenStore (its key stands for its token ids). model: the reference
    model, if loaded; with start_layer and residuals the pass starts from the frozen layers'
    cached output (one forward pass in all, not one and a part)."""
    ld_alpha = cfg.align.ld_alpha
    key = hash_bytes(tokenized.key.encode(), hash_path(ref_path).encode(),
                     str(cfg.align.chunk_size).encode(),
                     b"packed" if cfg.align.packed_pairs else b"rows",
                     # length-desensitised sums differ; plain ones keep their old key
                     *([f"ld_alpha={ld_alpha!r}".encode()] if ld_alpha != 1.0 else []))
    cache = run_folder.path(cfg, "refcache", f"{key}.npz")
    if os.path.exists(cache):
        cached = _read_cache(cache, ids)
        if cached is not None:
            log(STAGE, f"reference log-probs: cache hit {os.path.basename(cache)}")
            return cached
    log(STAGE, "reference log-probs: computing (one jitted pass)")
    chosen, rejected = pair_logprobs_pass(
        cfg, model if model is not None else models.from_pretrained(ref_path), tokenized, tok,
        name=STAGE + "/reference", start_layer=start_layer, residuals=residuals,
        ld_alpha=ld_alpha)
    if not (np.isfinite(chosen).all() and np.isfinite(rejected).all()):
        raise FloatingPointError("reference log-probs contain NaN/inf; check the reference model")
    if jax.process_index() == 0:
        with atomic_open(cache, "wb") as f:
            np.savez(f, ids=np.asarray(ids), chosen=chosen, rejected=rejected)
    return chosen, rejected


def _read_cache(cache: str, ids) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (chosen, rejected) log-probs, or None (with a message) when the file is
    unreadable, made for other pairs, or holds NaN/inf: then it is computed again."""
    try:
        with np.load(cache) as f:
            cached_ids, chosen, rejected = list(f["ids"]), f["chosen"], f["rejected"]
    except Exception as e:  # truncated or corrupt npz (zipfile / pickle / value errors)
        log(STAGE, f"reference cache {cache} is unreadable ({type(e).__name__}: {e}); "
                   "recomputing")
        return None
    if cached_ids != list(ids) or chosen.shape != (len(ids),) or rejected.shape != (len(ids),):
        log(STAGE, f"reference cache {cache} was made for other pairs; recomputing")
        return None
    if not (np.isfinite(chosen).all() and np.isfinite(rejected).all()):
        log(STAGE, f"reference cache {cache} holds NaN/inf; recomputing")
        return None
    return chosen, rejected


def method_targets(cfg, method: str, pool_ids, n_labelled: int):
    """(swap [N], weight [N], keep [N]) over the pool (labelled first, then unlabelled) under
    the method's table entry (stages/methods.py)."""
    m = METHODS[method]
    n = len(pool_ids)
    first = 0 if m.pool == "all" else n_labelled  # labelled pairs are the annotator's
    ids = pool_ids[first:]
    swap = np.zeros(n, bool)
    weight = np.ones(n, np.float32)
    keep = np.zeros(n, bool)
    inputs, tau = {}, 1.0  # tau only scales C3, which needs the scores below
    if m.needs_gold:
        gold = run_folder.load_gold(cfg)
        if gold is None:
            raise ValueError(f"method {method!r} needs gold scores (data/gold.json), which only "
                             "the controlled settings (data.source=synthetic or demo) write")
        inputs["gold"] = np.asarray([gold[i] for i in ids], np.float64).reshape(-1, 2)
    if m.needs_scores:
        # The score stage scored the whole unlabelled split; ids may be a subset of it
        # (align.max_pairs).
        scored = [p.id for p in run_folder.load_split(cfg, "unlabelled")]
        s = scores.read_scores(scores_path(cfg), expected_ids=scored,
                               expected_annotator=annotator_identity(cfg))
        row = {pair_id: k for k, pair_id in enumerate(scored)}
        unscored = [i for i in ids if i not in row]
        if unscored:
            raise scores.ScoresError(
                f"{scores_path(cfg)}: scores do not match the dataset: {len(unscored)} "
                f"alignment pairs have none (e.g. {unscored[:3]}); the scores were made for "
                "other data")
        at = np.asarray([row[i] for i in ids], np.int64)
        inputs.update(score_a=s["score_a"][at], score_b=s["score_b"][at])
        tau = s["header"]["tau"]  # the temperature the score stage wrote its confidences with
    swap[first:], weight[first:], keep[first:] = targets(
        m, len(ids), kind=cfg.align.confidence, tau=tau,
        fraction=cfg.align.top_fraction, rater_temperature=cfg.data.rater_temperature, **inputs)
    return swap, weight, keep


def alignment_task(a, *, start_layer: int = 0):
    """The preference task the align step trains, from the config's align section (the loss
    and its options); also what launch/plan.py compiles."""
    pair_loss = losses.pair_loss_fn(
        a.loss, beta=a.beta, label_smoothing=a.label_smoothing, gamma=a.gamma,
        loss_weights=a.loss_weights, discopop_tau=a.discopop_tau,
        f_divergence=a.f_divergence_type, f_alpha_coef=a.f_alpha_divergence_coef)
    return functools.partial(tasks.preference_task, pair_loss=pair_loss, beta=a.beta,
                             normalize=a.normalize, chunk_size=a.chunk_size,
                             start_layer=start_layer, ld_alpha=a.ld_alpha, wpo=a.use_weighting)


def run_method(cfg, method: str) -> dict:
    stage = f"{STAGE}/{method}"
    return run_folder.once(cfg, stage, "policy exists", lambda: _train(cfg, method, stage))


def _train(cfg, method: str, stage: str) -> dict:
    ref_path = reference_path(cfg)
    tok = models.load_tokenizer(ref_path)
    pool, n_labelled = pool_pairs(cfg)
    ids = [p.id for p in pool]
    tokenized = common.pair_store(cfg, common.pair_tokenizer(cfg, tok), pool)
    swap, weight, keep = method_targets(cfg, method, ids, n_labelled)
    index = np.flatnonzero(keep)
    items = tokenized.select(index)
    sel_swap, sel_weight = swap[index], weight[index]
    train = cfg.align.train
    micro_size = train.batch_size // train.micro_batches

    model = models.from_pretrained(ref_path)
    start_layer, residuals = _frozen_residuals(cfg, model, tokenized, tok)
    pool_collate, pool_lengths = pair_batches(
        cfg, tokenized, tok, share_prefix=shares_prefix(cfg, model, start_layer))
    prefix = pool_collate.keywords.get("prefix")
    if prefix is not None:
        log(stage, f"the {len(prefix)} tokens that most prompts start with run once per batch")
    ref_chosen, ref_rejected = reference_logprobs(cfg, ids, tokenized, ref_path, tok, model=model,
                                                  start_layer=start_layer, residuals=residuals)
    sel_ref_c = np.where(sel_swap, ref_rejected[index], ref_chosen[index]).astype(np.float32)
    sel_ref_r = np.where(sel_swap, ref_chosen[index], ref_rejected[index]).astype(np.float32)
    sel_residuals = None if residuals is None else [residuals[i] for i in index]

    def collate(batch_index, *, shard):
        batch = pool_collate(items, batch_index, batch_size=micro_size, swap=sel_swap,
                             weights=sel_weight, shard=shard)
        rows = np.maximum(batch["pair_index"], 0)
        batch["ref_logps"] = np.concatenate([sel_ref_c[rows], sel_ref_r[rows]])
        if sel_residuals is not None:
            batch["residual"] = place_residuals(batch["pair_index"], items, sel_residuals,
                                                sel_swap, length=batch["input_ids"].shape[1])
        return batch

    trainable = nnx.Param
    if cfg.align.lora_rank > 0:
        lora = models.LoRAConfig(rank=cfg.align.lora_rank, alpha=cfg.align.lora_alpha,
                                 dropout=cfg.align.lora_dropout,
                                 targets=tuple(cfg.align.lora_targets),
                                 layers=tuple(cfg.align.lora_layers))
        model = models.apply_lora(model, lora, rngs=nnx.Rngs(cfg.seed))
        model.train()
        trainable = models.trainable_filter(model)
    task = alignment_task(cfg.align, start_layer=start_layer)
    # Cached reference: forward + backward of the policy only, about 6 N FLOPs per token.
    frozen_weights = cfg.align.lora_rank > 0
    flops = train_flops_per_token(model, lm_head=True, frozen_weights=frozen_weights,
                                  first_layer=start_layer)
    if cfg.align.packed_pairs and items:
        # Packed rows send only response positions through the LM head: count its FLOPs for
        # the response share of the packed tokens (the loop counts packed tokens).
        body = train_flops_per_token(model, lm_head=False, frozen_weights=frozen_weights,
                                     first_layer=start_layer)
        responses = sum(int(items.field_lengths(f).sum()) for f in ("chosen", "rejected"))
        flops = body + (flops - body) * responses / int(pool_lengths[index].sum())
    model = fit(model, task, lengths=pool_lengths[index], collate=collate,
                train_cfg=train, mesh=common.mesh_for(cfg), seed=cfg.seed,
                workdir=run_folder.path(cfg, stage), name=stage, trainable=trainable,
                flops_per_token=flops)
    if cfg.align.lora_rank > 0:
        model.eval()
    out = run_folder.path(cfg, stage, "model")
    models.save_pretrained(model, out, tokenizer=tok)
    return {"method": method, "pairs": int(len(items)),
            "weak_disagrees_with_human": float(sel_swap.mean()) if len(items) else 0.0,
            "mean_weight": float(sel_weight.mean()) if len(items) else 0.0, "policy": out}


_RESIDUALS: dict = {}  # the last pool's frozen-layer output, shared by the methods of a run


def _frozen_residuals(cfg, model, tokenized, tok):
    """(start_layer, per-pair residuals) when the layers below the lowest adapter can run once
    (stages/frozen_layers.py), else (0, None)."""
    a = cfg.align
    if not (a.lora_rank > 0 and a.packed_pairs and a.frozen_cache_gb > 0 and tokenized
            and not a.train.scan_layers and frozen_layers.supports_residual_input(model)):
        return 0, None
    adapted = models.lora.adapted_layers(model, tuple(a.lora_layers))
    start = min(adapted) if adapted else 0
    if start == 0:
        return 0, None
    size = frozen_layers.cache_bytes(tokenized, model.config.hidden_size)
    if size > a.frozen_cache_gb * 2**30:
        log(STAGE, f"the output of frozen layers 0-{start - 1} would take {size / 2**30:.1f} "
                   f"GB > align.frozen_cache_gb; they run at every step")
        return 0, None
    key = (tokenized.key, hash_path(reference_path(cfg)), start)
    if key not in _RESIDUALS:
        _RESIDUALS.clear()
        _RESIDUALS[key] = frozen_layers.residuals(cfg, model, tokenized, tok, stop_layer=start,
                                                  name=STAGE + "/frozen_layers")
    return start, _RESIDUALS[key]


def pool_pairs(cfg) -> tuple[list, int]:
    """The alignment pool (labelled pairs first, then unlabelled) and the number of labelled
    ones. Labelled pairs belong to the annotator; only methods with pool "all" (the 100%-human
    baseline) train on them, so the pool (and the reference pass) holds them only then."""
    wanted = any(METHODS[m].pool == "all" for m in cfg.align.methods)
    labelled = run_folder.load_split(cfg, "labelled") if wanted else []
    return labelled + capped(run_folder.load_split(cfg, "unlabelled"), cfg.align.max_pairs,
                             seed=cfg.seed), len(labelled)


def capped(pairs: list, max_pairs: int, *, seed: int) -> list:
    """At most max_pairs of pairs (0 = all): those first by seeded_rank of their ids, so the
    subset depends on the seed and the ids only, in the pairs' own order."""
    if not max_pairs or len(pairs) <= max_pairs:
        return pairs
    chosen = set(sorted((p.id for p in pairs), key=lambda i: seeded_rank(i, seed))[:max_pairs])
    return [p for p in pairs if p.id in chosen]  # split ids are unique


def write_label_quality(cfg) -> dict | None:
    """{method: evaluation.label_quality} into align/label_quality.json (controlled settings)."""
    gold = run_folder.load_gold(cfg)
    if gold is None:
        return None
    pool, n_labelled = pool_pairs(cfg)
    ids = [p.id for p in pool]
    g = np.asarray([gold[i] for i in ids], np.float64).reshape(-1, 2)
    quality = {}
    for method in cfg.align.methods:
        swap, weight, keep = method_targets(cfg, method, ids, n_labelled)
        quality[method] = label_quality(~swap, weight, keep, g[:, 0], g[:, 1])
        q = quality[method]
        log(STAGE, f"{method}: {q['pairs']} pairs, gold accuracy "
                   f"{q['gold_accuracy']:.1%}, weighted {q['weighted_gold_accuracy']:.1%}, "
                   f"weight on gold ties {q['tie_weight_share']:.1%}")
    if jax.process_index() == 0:
        # Methods in the configured order, as results.md lists them.
        write_json(run_folder.path(cfg, STAGE, "label_quality.json"), quality, sort_keys=False)
    return quality


def run(cfg) -> dict:
    write_label_quality(cfg)
    return {method: run_method(cfg, method) for method in cfg.align.methods}
