"""Stage 5, evaluate: GRA of every aligned policy against the reference on held-out prompts.

For each held-out prompt, one response is sampled from the policy and one from the reference
(KV-cache sampler, temperature evaluate.temperature); the gold judge scores both; GRA is the
share of prompts where the policy's response scores higher (ties count half), with a bootstrap
95% interval. Writes eval/samples_<name>.jsonl, results.json and results.md.
"""
from __future__ import annotations

import functools
import json

import jax
import numpy as np

from cwpo_jax import gold as gold_lib
from cwpo_jax import models
from cwpo_jax.data.batching import collate_prompts, plan_batches
from cwpo_jax.evaluation import gold_reward_accuracy
from cwpo_jax.io_utils import atomic_open, write_json
from cwpo_jax.stages import common, sft

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
    """One sampled response per prompt, decoded to text (special tokens dropped)."""
    tok = models.load_tokenizer(model_path)
    model = models.from_pretrained(model_path)
    encode = common.pair_tokenizer(cfg, tok)
    items = encode.encode_prompt_only(prompts)
    e = cfg.evaluate
    collate = functools.partial(collate_prompts, items, batch_size=e.batch_size,
                                buckets=common.buckets(cfg), pad_id=common.pad_id(tok))
    texts = [None] * len(items)
    key = jax.random.key(seed)
    plan = plan_batches([len(s.prompt) for s in items], e.batch_size, shuffle=False)
    for b, index in enumerate(plan):
        batch = collate(index)
        # Rows that only pad a short batch still need one real token for the left-padded sampler.
        ids, mask = batch["input_ids"].copy(), batch["attention_mask"].copy()
        mask[:, -1] = 1
        out = models.generate(model, ids, mask, key=jax.random.fold_in(key, b),
                              max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                              top_p=e.top_p, eos_token_id=tok.eos_token_id,
                              pad_token_id=common.pad_id(tok))
        tokens, gen_mask = np.asarray(out.tokens), np.asarray(out.mask)
        for row, i in enumerate(batch["index"]):
            if i >= 0:
                texts[i] = tok.decode(tokens[row][gen_mask[row] > 0], skip_special_tokens=True)
        common.log(name, f"sampled {min((b + 1) * e.batch_size, len(items))}/{len(items)} prompts")
    return texts


def _write_samples(cfg, name, prompts, texts, scores_):
    with atomic_open(common.path(cfg, STAGE, f"samples_{name}.jsonl")) as f:
        for p, t, s in zip(prompts, texts, scores_):
            f.write(json.dumps({"prompt": list(p), "response": t, "gold": float(s)},
                               ensure_ascii=False) + "\n")


def results_markdown(results: dict) -> str:
    lines = ["| method | GRA vs reference (%) | 95% CI | mean gold reward | pairs trained |",
             "|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {100 * m['gra']:.1f} | [{100 * m['ci_low']:.1f}, "
                     f"{100 * m['ci_high']:.1f}] | {m['mean_gold']:.3f} | {m['pairs']} |")
    ref = results["reference"]
    lines.append(f"| reference (SFT) | - | - | {ref['mean_gold']:.3f} | - |")
    a = results["annotator"]
    lines += ["", f"Prompts: {ref['prompts']}. Gold judge: {results['gold_judge']}.",
              f"Annotator accuracy on the unlabelled share: vs human labels "
              f"{100 * a['accuracy_vs_human']:.1f}%" + (
                  f", vs gold {100 * a['accuracy_vs_gold']:.1f}% (simulated raters vs gold "
                  f"{100 * a['human_vs_gold']:.1f}%)" if "accuracy_vs_gold" in a else "")
              + f"; ECE vs human {a['ece_vs_human']:.3f}."]
    return "\n".join(lines) + "\n"


def run(cfg) -> dict:
    prompts = eval_prompts(cfg)
    if not prompts:
        raise ValueError("the eval split is empty; raise data.eval_fraction")
    judge = gold_lib.make_judge(cfg.evaluate.gold_judge)
    prompt_texts = [p[-1]["content"] for p in prompts]
    ref_path = sft.reference_path(cfg)
    ref_texts = sample(cfg, ref_path, prompts, seed=cfg.seed, name=STAGE + "/reference")
    ref_gold = judge.score(prompt_texts, ref_texts)
    _write_samples(cfg, "reference", prompts, ref_texts, ref_gold)
    methods = {}
    for i, method in enumerate(cfg.align.methods):
        summary = common.read_json(common.done_marker(cfg, f"align/{method}"))
        texts = sample(cfg, summary["policy"], prompts, seed=cfg.seed + 1 + i,
                       name=f"{STAGE}/{method}")
        policy_gold = judge.score(prompt_texts, texts)
        _write_samples(cfg, method, prompts, texts, policy_gold)
        stats = gold_reward_accuracy(policy_gold, ref_gold, seed=cfg.seed,
                                     resamples=cfg.evaluate.bootstrap)
        methods[method] = {**stats, "mean_gold": float(np.mean(policy_gold)),
                           "pairs": summary["pairs"], "mean_weight": summary["mean_weight"]}
        common.log(STAGE, f"{method}: GRA {stats['gra']:.1%} "
                          f"[{stats['ci_low']:.1%}, {stats['ci_high']:.1%}]")
    score_summary = common.read_json(common.done_marker(cfg, "score"))
    annotator = {k: v for k, v in score_summary.items() if k != "annotator"}
    annotator.update(common.read_json(common.done_marker(cfg, "annotator")))
    results = {"methods": methods, "annotator": annotator, "gold_judge": judge.name,
               "reference": {"mean_gold": float(np.mean(ref_gold)), "prompts": len(prompts)},
               "data": common.read_json(common.done_marker(cfg, "data")),
               "config": cfg.to_dict()}
    if jax.process_index() == 0:
        write_json(common.path(cfg, "results.json"), results)
        with atomic_open(common.path(cfg, "results.md")) as f:
            f.write(results_markdown(results))
    print(results_markdown(results))
    return results
