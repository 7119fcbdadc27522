"""Stage 5, evaluate: GRA of every aligned policy against the reference on held-out prompts.

For each held-out prompt, k = evaluate.samples_per_prompt responses are sampled from the policy
and k from the reference (KV-cache sampler, temperature evaluate.temperature); the gold judge
scores them all; a prompt's win rate is the share of its k x k (policy, reference) comparisons
the policy wins (ties count half) and GRA is the mean over prompts, with a bootstrap 95%
interval over prompts. Policies share their sampling keys (common random numbers), so the
paired differences between methods (DIFFERENCES) measure the methods, not the draws; the
reference uses independent keys. Student movement (stages/movement.py), label quality
(align/label_quality.json) and the annotator's gold diagnostics (score stage) go into
results.json next to GRA, and so do the degeneration metrics of every model's samples
(degeneration.py) with gated GRA: a sample beyond the thresholds fixed from the reference's own
samples counts as the worst sample. final_loss is the last step's sum(w l) / sum(w), in one
unit for every method whatever its weights (final_objective: what the optimiser minimised).
Writes eval/samples_<name>.jsonl (one line per response, with its metrics), results.json and
results.md; a rerun with the same seed, methods and evaluate settings skips the stage.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from cwpo_jax import assets, report, scores
from cwpo_jax import degeneration as dg
from cwpo_jax import gold as gold_lib
from cwpo_jax.evaluation import gra_of_win_rates, paired_difference, prompt_win_rates
from cwpo_jax.io_utils import atomic_open, read_json, write_json
from cwpo_jax.stages import movement, run_folder
from cwpo_jax.stages.config import eval_judge
from cwpo_jax.stages.methods import DIFFERENCES
from cwpo_jax.stages.run_folder import reference_path, scores_path
from cwpo_jax.stages.sampling import sample_texts
from cwpo_jax.stages.tables import results_markdown, training_markdown
from cwpo_jax.train.hosts import log

STAGE = "eval"


def eval_prompts(cfg) -> list:
    """Unique prompts of the eval split, at most data.max_eval_prompts (in split order)."""
    seen, prompts = set(), []
    for p in run_folder.load_split(cfg, "eval"):
        key = json.dumps(p.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(p.prompt)
    return prompts[:cfg.data.max_eval_prompts]


# Sampling streams: every policy draws from the same keys (common random numbers, so methods
# differ by their weights, not by their luck); the reference from other, independent keys, so
# each GRA still compares independent draws.
REFERENCE_STREAM, POLICY_STREAM = 0, 1_000_003


def sample(cfg, model_path: str, prompts, *, stream: int, name: str) -> list[str]:
    """evaluate.samples_per_prompt responses per prompt, prompt-major (entry i * k + j is sample
    j of prompt i), sample j of prompt i drawn from key (seed + stream, i * k + j) alone."""
    e = cfg.evaluate
    k = e.samples_per_prompt
    repeated = [p for p in prompts for _ in range(k)]
    return sample_texts(cfg, model_path, repeated, seed=cfg.seed + stream,
                        row_ids=list(range(len(repeated))), max_new_tokens=e.max_new_tokens,
                        temperature=e.temperature, top_p=e.top_p, batch_size=e.batch_size,
                        name=name)


def _write_samples(cfg, name, prompts, texts, scores_, k: int, metrics: dict, flags):
    """One line per response: its prompt, sample index j < k, text, gold score, degeneration
    metrics (nll null for an empty response) and whether the gate flags it."""
    with atomic_open(run_folder.path(cfg, STAGE, f"samples_{name}.jsonl")) as f:
        for i, (t, s) in enumerate(zip(texts, scores_)):
            row = {"prompt": list(prompts[i // k]), "sample": i % k, "response": t,
                   "gold": float(s)}
            row.update({m: (float(v[i]) if np.isfinite(v[i]) else None)
                        for m, v in metrics.items()})
            row["degenerate"] = bool(flags[i])
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def vocabulary(cfg) -> frozenset:
    """The words of the pool (every split's prompts and responses) and, for the demo source,
    of the prompt corpus: what nonword_share checks samples against. No policy's samples."""
    texts = assets.chatterbot_prompts() if cfg.data.source == "demo" else []
    for split in ("labelled", "unlabelled", "eval"):
        for p in run_folder.load_split(cfg, split):
            texts += [m["content"] for m in p.prompt] + [p.chosen, p.rejected]
    return dg.build_vocabulary(texts)


def positive_words(judge_name: str) -> frozenset:
    """The judge's positive words: the lexicon judge's list; otherwise VADER's lexicon entries
    of positive valence (the VADER judge's own; a general sentiment lexicon for reward models)."""
    if judge_name == "lexicon":
        return frozenset(gold_lib.POSITIVE_WORDS)
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return frozenset(w for w, v in SentimentIntensityAnalyzer().lexicon.items() if v > 0)


def _settings(cfg) -> dict:
    """What evaluation depends on beyond the earlier stages' outputs (JSON-normalised)."""
    return json.loads(json.dumps({"seed": cfg.seed, "methods": list(cfg.align.methods),
                                  "evaluate": cfg.evaluate.to_dict()}))


NORMALIZED_LOSS = "loss/normalized"  # train/tasks.preference_task: sum(w l) / sum(w)


def differences(win_rates: dict[str, np.ndarray], *, seed: int, resamples: int) -> dict:
    """{"A-B": paired bootstrap of GRA(A) - GRA(B) over prompts} for DIFFERENCES present."""
    return {f"{a}-{b}": paired_difference(win_rates[a], win_rates[b], seed=seed,
                                          resamples=resamples)
            for a, b in DIFFERENCES if a in win_rates and b in win_rates}


def _last_record(cfg, method: str) -> dict:
    """The last logged training step's metrics of a method ({} when none)."""
    metrics = run_folder.path(cfg, "align", method, "metrics.jsonl")
    if not os.path.exists(metrics):
        return {}
    records = [r for r in report.read_metrics(metrics) if "loss" in r]
    return records[-1] if records else {}


def _final_loss(cfg, method: str):
    """The last step's sum(w l) / sum(w) (the plain loss for runs logged before it was)."""
    record = _last_record(cfg, method)
    return record.get(NORMALIZED_LOSS, record.get("loss"))


def _final_training(cfg, method: str) -> dict:
    record = _last_record(cfg, method)
    return {"final_loss": record.get(NORMALIZED_LOSS, record.get("loss")),
            "final_objective": record.get("loss"),
            "final_weighted_accuracy": record.get("rewards/weighted_accuracies")}


def run(cfg) -> dict:
    if run_folder.is_done(cfg, STAGE) and run_folder.read_done(cfg, STAGE) == _settings(cfg):
        log(STAGE, "results exist for these settings; skipping")
        return read_json(run_folder.path(cfg, "results.json"))
    if eval_judge(cfg) == "none":
        return _results_without_judge(cfg)
    prompts = eval_prompts(cfg)
    if not prompts:
        raise ValueError("the eval split is empty; raise data.eval_fraction")
    judge = gold_lib.make_judge(eval_judge(cfg))
    k = cfg.evaluate.samples_per_prompt
    prompt_texts = [p[-1]["content"] for p in prompts for _ in range(k)]
    ref_path = reference_path(cfg)
    ref_texts = sample(cfg, ref_path, prompts, stream=REFERENCE_STREAM, name=STAGE + "/reference")
    texts, gold_scores = {"reference": ref_texts}, {"reference": judge.score(prompt_texts,
                                                                             ref_texts)}
    methods, policies = {}, {}
    for method in cfg.align.methods:
        summary = run_folder.read_done(cfg, f"align/{method}")
        texts[method] = sample(cfg, summary["policy"], prompts, stream=POLICY_STREAM,
                               name=f"{STAGE}/{method}")
        policies[method] = (summary["policy"], texts[method])
        gold_scores[method] = judge.score(prompt_texts, texts[method])
        methods[method] = {"mean_gold": float(np.mean(gold_scores[method])),
                           "pairs": summary["pairs"], "mean_weight": summary["mean_weight"],
                           **_final_training(cfg, method)}
    moved, nll = movement.student_movement(cfg, prompts, k, ref_path, policies, ref_texts)
    # The gate's thresholds come from the reference's samples alone, before any comparison.
    vocab, positive = vocabulary(cfg), positive_words(judge.name)
    metrics = {name: {**dg.sample_metrics(t, vocab, positive), "nll": nll[name]}
               for name, t in texts.items()}
    thresholds = dg.gate_thresholds(metrics["reference"])
    flags = {name: dg.degenerate(m, thresholds) for name, m in metrics.items()}
    for name in texts:
        _write_samples(cfg, name, prompts, texts[name], gold_scores[name], k, metrics[name],
                       flags[name])
    ref_gold = np.reshape(gold_scores["reference"], (-1, k))
    ref_gated = np.reshape(dg.gated_scores(gold_scores["reference"], flags["reference"]), (-1, k))
    win_rates, gated_win_rates = {}, {}
    for method in cfg.align.methods:
        win_rates[method] = prompt_win_rates(np.reshape(gold_scores[method], (-1, k)), ref_gold)
        gated_win_rates[method] = prompt_win_rates(
            np.reshape(dg.gated_scores(gold_scores[method], flags[method]), (-1, k)), ref_gated)
        stats = gra_of_win_rates(win_rates[method], seed=cfg.seed,
                                 resamples=cfg.evaluate.bootstrap)
        gated = gra_of_win_rates(gated_win_rates[method], seed=cfg.seed,
                                 resamples=cfg.evaluate.bootstrap)
        methods[method] = {**stats, "gated_gra": gated["gra"], "gated_ci_low": gated["ci_low"],
                           "gated_ci_high": gated["ci_high"], **methods[method],
                           **moved[method],
                           "degeneration": dg.summary(texts[method], metrics[method],
                                                      flags[method])}
        log(STAGE, f"{method}: GRA {stats['gra']:.1%} [{stats['ci_low']:.1%}, "
                   f"{stats['ci_high']:.1%}], gated {gated['gra']:.1%}, degenerate samples "
                   f"{flags[method].mean():.1%}")
    score_summary = run_folder.read_done(cfg, "score")
    annotator = {k: v for k, v in score_summary.items() if k != "annotator"}
    annotator.update(run_folder.read_done(cfg, "annotator"))
    quality_path = run_folder.path(cfg, "align", "label_quality.json")
    results = {"methods": methods,
               "differences": differences(win_rates, seed=cfg.seed,
                                          resamples=cfg.evaluate.bootstrap),
               "differences_gated": differences(gated_win_rates, seed=cfg.seed,
                                                resamples=cfg.evaluate.bootstrap),
               "degeneration_gate": {"quantile": dg.GATE_QUANTILE, "thresholds": thresholds,
                                     "sides": dict(dg.GATE), "vocabulary_words": len(vocab),
                                     "positive_words": len(positive)},
               "label_quality": (read_json(quality_path)
                                 if os.path.exists(quality_path) else None),
               "annotator": annotator, "gold_judge": judge.name,
               "reference": {"mean_gold": float(np.mean(ref_gold)), "prompts": len(prompts),
                             "samples_per_prompt": k,
                             "degeneration": dg.summary(ref_texts, metrics["reference"],
                                                        flags["reference"])},
               "data": run_folder.read_done(cfg, "data"),
               "config": cfg.to_dict()}
    if jax.process_index() == 0:
        write_json(run_folder.path(cfg, "results.json"), results)
        with atomic_open(run_folder.path(cfg, "results.md")) as f:
            f.write(results_markdown(results))
        gold = run_folder.load_gold(cfg)
        scored = scores.read_scores(scores_path(cfg))
        gold_a = None if gold is None else (
            np.asarray([gold[i][0] > gold[i][1] for i in scored["ids"]]),
            np.asarray([gold[i][0] != gold[i][1] for i in scored["ids"]]))
        for plot in report.write_plots(cfg.output_dir, results, scored, gold_a):
            log(STAGE, f"wrote {plot}")
    run_folder.mark_done(cfg, STAGE, _settings(cfg))
    if jax.process_index() == 0:
        print(results_markdown(results))
    return results


def _results_without_judge(cfg) -> dict:
    """evaluate.gold_judge=none: nothing is sampled or judged, so there is no GRA. results.json
    and results.md hold what training measured per method (pairs, mean weight, final loss,
    where the model is), the annotator's diagnostics against the human labels and, in the
    controlled settings, label quality; plots/training.png the training curves."""
    methods = {}
    for method in cfg.align.methods:
        summary = run_folder.read_done(cfg, f"align/{method}")
        methods[method] = {"pairs": summary["pairs"], "mean_weight": summary["mean_weight"],
                           "final_loss": _final_loss(cfg, method), "policy": summary["policy"]}
    annotator = {k: v for k, v in run_folder.read_done(cfg, "score").items() if k != "annotator"}
    annotator.update(run_folder.read_done(cfg, "annotator"))
    quality_path = run_folder.path(cfg, "align", "label_quality.json")
    results = {"methods": methods, "differences": {},
               "label_quality": read_json(quality_path) if os.path.exists(quality_path) else None,
               "annotator": annotator, "gold_judge": "none",
               "data": run_folder.read_done(cfg, "data"), "config": cfg.to_dict()}
    if jax.process_index() == 0:
        write_json(run_folder.path(cfg, "results.json"), results)
        with atomic_open(run_folder.path(cfg, "results.md")) as f:
            f.write(training_markdown(results))
        curves = {f"align/{m}": report.read_metrics(path) for m in methods
                  if os.path.exists(path := run_folder.path(cfg, "align", m, "metrics.jsonl"))}
        if curves:
            plot = os.path.join(cfg.output_dir, "plots", "training.png")
            os.makedirs(os.path.dirname(plot), exist_ok=True)
            report.plot_training(curves, plot)
            log(STAGE, f"wrote {plot}")
    run_folder.mark_done(cfg, STAGE, _settings(cfg))
    log(STAGE, "evaluate.gold_judge=none: no samples and no GRA; results.json holds the "
               "training results")
    return results
