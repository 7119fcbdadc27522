"""Stage 5, evaluate: GRA of every aligned policy against the reference on held-out prompts.

For each held-out prompt, k = evaluate.samples_per_prompt responses are sampled from the policy
and k from the reference (KV-cache sampler, temperature evaluate.temperature); the gold judge
scores them all; a prompt's win rate is the share of its k x k (policy, reference) comparisons
the policy wins (ties count half) and GRA is the mean over prompts, with a bootstrap 95%
interval over prompts. Writes eval/samples_<name>.jsonl (one line per response), results.json
and results.md; a rerun with the same seed, methods and evaluate settings skips the stage.
"""
from __future__ import annotations

import json

import jax
import numpy as np

from cwpo_jax import gold as gold_lib
from cwpo_jax import report, scores
from cwpo_jax.evaluation import gold_reward_accuracy
from cwpo_jax.io_utils import atomic_open, write_json
from cwpo_jax.stages import common, sft
from cwpo_jax.stages import score as score_stage

STAGE = "eval"


def eval_prompts(cfg) -> list:
    """Unique prompts of the eval split, at most evaluate.max_eval_prompts (in split order)."""
    seen, prompts = set(), []
    for p in common.load_split(cfg, "eval"):
        key = json.dumps(p.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(p.prompt)
    return prompts[:cfg.data.max_eval_prompts]


def sample(cfg, model_path: str, prompts, *, seed: int, name: str) -> list[str]:
    """evaluate.samples_per_prompt responses per prompt, prompt-major (entry i * k + j is sample
    j of prompt i). The copies of a prompt share the sampler's batches and draw independently."""
    e = cfg.evaluate
    repeated = [p for p in prompts for _ in range(e.samples_per_prompt)]
    return common.sample_texts(cfg, model_path, repeated, seed=seed,
                               max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                               top_p=e.top_p, batch_size=e.batch_size, name=name)


def _write_samples(cfg, name, prompts, texts, scores_, k: int = 1):
    """One line per response: its prompt, sample index j < k, text and gold score."""
    with atomic_open(common.path(cfg, STAGE, f"samples_{name}.jsonl")) as f:
        for i, (t, s) in enumerate(zip(texts, scores_)):
            f.write(json.dumps({"prompt": list(prompts[i // k]), "sample": i % k, "response": t,
                                "gold": float(s)}, ensure_ascii=False) + "\n")


def _settings(cfg) -> dict:
    """What evaluation depends on beyond the earlier stages' outputs (JSON-normalised)."""
    return json.loads(json.dumps({"seed": cfg.seed, "methods": list(cfg.align.methods),
                                  "evaluate": cfg.evaluate.to_dict()}))


def results_markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [f"Student {cfg['sft']['model']} (reference = "
             f"{'its SFT' if cfg['sft']['enabled'] else 'the model as given'}), weak annotator "
             f"{cfg['annotator']['model']} trained on {100 * cfg['data']['labelled_fraction']:.0f}%"
             f" human labels, loss {cfg['align']['loss']} (beta {cfg['align']['beta']}).", "",
             "| method | GRA vs reference (%) | 95% CI | mean gold reward | pairs trained |",
             "|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {100 * m['gra']:.1f} | [{100 * m['ci_low']:.1f}, "
                     f"{100 * m['ci_high']:.1f}] | {m['mean_gold']:.3f} | {m['pairs']} |")
    ref = results["reference"]
    lines.append(f"| reference (SFT) | - | - | {ref['mean_gold']:.3f} | - |")
    a = results["annotator"]
    k = ref["samples_per_prompt"]
    samples = (f", {k} samples per prompt from each model (GRA per prompt over the {k} x {k} "
               f"comparisons; the interval resamples prompts)" if k > 1 else "")
    lines += ["", f"Prompts: {ref['prompts']}{samples}. Gold judge: {results['gold_judge']}.",
              f"Annotator accuracy on the unlabelled share: vs human labels "
              f"{100 * a['accuracy_vs_human']:.1f}%" + (
                  f", vs gold {100 * a['accuracy_vs_gold']:.1f}% (simulated raters vs gold "
                  f"{100 * a['human_vs_gold']:.1f}%; {a['gold_decided_pairs']} pairs with a gold "
                  f"preference)" if "accuracy_vs_gold" in a else "")
              + f"; ECE vs human {a['ece_vs_human']:.3f}."]
    return "\n".join(lines) + "\n"


def run(cfg) -> dict:
    if (common.is_done(cfg, STAGE)
            and common.read_json(common.done_marker(cfg, STAGE)) == _settings(cfg)):
        common.log(STAGE, "results exist for these settings; skipping")
        return common.read_json(common.path(cfg, "results.json"))
    prompts = eval_prompts(cfg)
    if not prompts:
        raise ValueError("the eval split is empty; raise data.eval_fraction")
    judge = gold_lib.make_judge(cfg.evaluate.gold_judge)
    k = cfg.evaluate.samples_per_prompt
    prompt_texts = [p[-1]["content"] for p in prompts for _ in range(k)]
    ref_path = sft.reference_path(cfg)
    ref_texts = sample(cfg, ref_path, prompts, seed=cfg.seed, name=STAGE + "/reference")
    ref_gold = judge.score(prompt_texts, ref_texts)
    _write_samples(cfg, "reference", prompts, ref_texts, ref_gold, k)
    methods = {}
    for i, method in enumerate(cfg.align.methods):
        summary = common.read_json(common.done_marker(cfg, f"align/{method}"))
        texts = sample(cfg, summary["policy"], prompts, seed=cfg.seed + 1 + i,
                       name=f"{STAGE}/{method}")
        policy_gold = judge.score(prompt_texts, texts)
        _write_samples(cfg, method, prompts, texts, policy_gold, k)
        stats = gold_reward_accuracy(np.reshape(policy_gold, (-1, k)),
                                     np.reshape(ref_gold, (-1, k)), seed=cfg.seed,
                                     resamples=cfg.evaluate.bootstrap)
        methods[method] = {**stats, "mean_gold": float(np.mean(policy_gold)),
                           "pairs": summary["pairs"], "mean_weight": summary["mean_weight"]}
        common.log(STAGE, f"{method}: GRA {stats['gra']:.1%} "
                          f"[{stats['ci_low']:.1%}, {stats['ci_high']:.1%}]")
    score_summary = common.read_json(common.done_marker(cfg, "score"))
    annotator = {k: v for k, v in score_summary.items() if k != "annotator"}
    annotator.update(common.read_json(common.done_marker(cfg, "annotator")))
    results = {"methods": methods, "annotator": annotator, "gold_judge": judge.name,
               "reference": {"mean_gold": float(np.mean(ref_gold)), "prompts": len(prompts),
                             "samples_per_prompt": k},
               "data": common.read_json(common.done_marker(cfg, "data")),
               "config": cfg.to_dict()}
    if jax.process_index() == 0:
        write_json(common.path(cfg, "results.json"), results)
        with atomic_open(common.path(cfg, "results.md")) as f:
            f.write(results_markdown(results))
        gold = common.load_gold(cfg)
        scored = scores.read_scores(score_stage.scores_path(cfg))
        gold_a = None if gold is None else (
            np.asarray([gold[i][0] > gold[i][1] for i in scored["ids"]]),
            np.asarray([gold[i][0] != gold[i][1] for i in scored["ids"]]))
        for plot in report.write_plots(cfg.output_dir, results, scored, gold_a):
            common.log(STAGE, f"wrote {plot}")
    common.mark_done(cfg, STAGE, _settings(cfg))
    print(results_markdown(results))
    return results
