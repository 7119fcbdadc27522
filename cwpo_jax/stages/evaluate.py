"""Stage 5, evaluate: GRA of every aligned policy against the reference on held-out prompts.

For each held-out prompt, k = evaluate.samples_per_prompt responses are sampled from the policy
and k from the reference (KV-cache sampler, temperature evaluate.temperature); the gold judge
scores them all; a prompt's win rate is the share of its k x k (policy, reference) comparisons
the policy wins (ties count half) and GRA is the mean over prompts, with a bootstrap 95%
interval over prompts. Policies share their sampling keys (common random numbers), so the
paired differences between methods (DIFFERENCES) measure the methods, not the draws; the
reference uses independent keys. Student movement (stages/movement.py), label quality
(align/label_quality.json) and the annotator's gold diagnostics (score stage) go into
results.json next to GRA. Writes eval/samples_<name>.jsonl (one line per response), results.json
and results.md; a rerun with the same seed, methods and evaluate settings skips the stage.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from cwpo_jax import gold as gold_lib
from cwpo_jax import report, scores
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


def _write_samples(cfg, name, prompts, texts, scores_, k: int = 1):
    """One line per response: its prompt, sample index j < k, text and gold score."""
    with atomic_open(run_folder.path(cfg, STAGE, f"samples_{name}.jsonl")) as f:
        for i, (t, s) in enumerate(zip(texts, scores_)):
            f.write(json.dumps({"prompt": list(prompts[i // k]), "sample": i % k, "response": t,
                                "gold": float(s)}, ensure_ascii=False) + "\n")


def _settings(cfg) -> dict:
    """What evaluation depends on beyond the earlier stages' outputs (JSON-normalised)."""
    return json.loads(json.dumps({"seed": cfg.seed, "methods": list(cfg.align.methods),
                                  "evaluate": cfg.evaluate.to_dict()}))


def differences(win_rates: dict[str, np.ndarray], *, seed: int, resamples: int) -> dict:
    """{"A-B": paired bootstrap of GRA(A) - GRA(B) over prompts} for DIFFERENCES present."""
    return {f"{a}-{b}": paired_difference(win_rates[a], win_rates[b], seed=seed,
                                          resamples=resamples)
            for a, b in DIFFERENCES if a in win_rates and b in win_rates}


def _final_loss(cfg, method: str):
    metrics = run_folder.path(cfg, "align", method, "metrics.jsonl")
    if not os.path.exists(metrics):
        return None
    records = [r for r in report.read_metrics(metrics) if "loss" in r]
    return records[-1]["loss"] if records else None


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
    ref_gold = judge.score(prompt_texts, ref_texts)
    _write_samples(cfg, "reference", prompts, ref_texts, ref_gold, k)
    methods, win_rates, policies = {}, {}, {}
    for method in cfg.align.methods:
        summary = run_folder.read_done(cfg, f"align/{method}")
        texts = sample(cfg, summary["policy"], prompts, stream=POLICY_STREAM,
                       name=f"{STAGE}/{method}")
        policies[method] = (summary["policy"], texts)
        policy_gold = judge.score(prompt_texts, texts)
        _write_samples(cfg, method, prompts, texts, policy_gold, k)
        win_rates[method] = prompt_win_rates(np.reshape(policy_gold, (-1, k)),
                                             np.reshape(ref_gold, (-1, k)))
        stats = gra_of_win_rates(win_rates[method], seed=cfg.seed,
                                 resamples=cfg.evaluate.bootstrap)
        methods[method] = {**stats, "mean_gold": float(np.mean(policy_gold)),
                           "pairs": summary["pairs"], "mean_weight": summary["mean_weight"],
                           "final_loss": _final_loss(cfg, method)}
        log(STAGE, f"{method}: GRA {stats['gra']:.1%} "
                   f"[{stats['ci_low']:.1%}, {stats['ci_high']:.1%}]")
    for method, moved in movement.student_movement(cfg, prompts, k, ref_path,
                                                   policies).items():
        methods[method].update(moved)
    score_summary = run_folder.read_done(cfg, "score")
    annotator = {k: v for k, v in score_summary.items() if k != "annotator"}
    annotator.update(run_folder.read_done(cfg, "annotator"))
    quality_path = run_folder.path(cfg, "align", "label_quality.json")
    results = {"methods": methods,
               "differences": differences(win_rates, seed=cfg.seed,
                                          resamples=cfg.evaluate.bootstrap),
               "label_quality": (read_json(quality_path)
                                 if os.path.exists(quality_path) else None),
               "annotator": annotator, "gold_judge": judge.name,
               "reference": {"mean_gold": float(np.mean(ref_gold)), "prompts": len(prompts),
                             "samples_per_prompt": k},
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
