"""How far each aligned policy moved from its reference, measured apart from GRA.

heldout_gold_accuracy: on the eval split's gold-decided pairs (at most evaluate.heldout_pairs,
  spread over the prompts: every prompt's first pair before any prompt's second), the share
  where the policy's implicit reward (log pi - log pi_ref) ranks the gold-better response
  higher (ties half).
kl_estimate: mean of log pi(y) - log pi_ref(y) over the policy's own evaluation samples (all k
  of every prompt; summed over response tokens, the decoded text re-tokenised). Sampled at
  evaluate.temperature, so it estimates KL(pi || pi_ref) up to that temperature.
The same reference pass gives every sample's (policies' and the reference's own) per-token
negative log-likelihood under the reference, for the degeneration metrics (degeneration.py).
"""
from __future__ import annotations

import json

import numpy as np

from cwpo_jax import models
from cwpo_jax.data import PreferencePair, content_id
from cwpo_jax.evaluation import implicit_reward_accuracy, kl_estimate
from cwpo_jax.stages import common, run_folder
from cwpo_jax.stages.pair_passes import pair_logprobs_pass


def spread_over_prompts(prompt_keys: list[str], limit: int) -> list[int]:
    """Indices of at most `limit` items (0 = all), every prompt's first item before any
    prompt's second, returned in their original order."""
    if not limit or len(prompt_keys) <= limit:
        return list(range(len(prompt_keys)))
    rank, seen = [], {}
    for key in prompt_keys:
        rank.append(seen.get(key, 0))
        seen[key] = rank[-1] + 1
    return sorted(int(i) for i in np.argsort(rank, kind="stable")[:limit])


def _gold_ordered_eval_pairs(cfg) -> list[PreferencePair]:
    """Eval pairs in the gold order (gold-better as chosen), gold ties left out, at most
    evaluate.heldout_pairs of them spread over the prompts; [] without gold."""
    gold = run_folder.load_gold(cfg)
    if gold is None:
        return []
    ordered = []
    for p in run_folder.load_split(cfg, "eval"):
        g_chosen, g_rejected = gold[p.id]
        if g_chosen != g_rejected:
            ordered.append(p if g_chosen > g_rejected else
                           PreferencePair(id=p.id, prompt=p.prompt, chosen=p.rejected,
                                          rejected=p.chosen, source=p.source))
    keys = [json.dumps(p.prompt, sort_keys=True) for p in ordered]
    return [ordered[i] for i in spread_over_prompts(keys, cfg.evaluate.heldout_pairs)]


def _sample_pairs(prompts, texts, k: int) -> tuple[list[PreferencePair], list[int]]:
    """Every non-empty sample (prompt-major, k per prompt) as the first response of a pair row
    (the layout of the log-prob pass), and its index in `texts`. Only that response's log-probs
    are read, so the second is empty: its row then costs the prompt and one response."""
    pairs, rows = [], []
    for i, text in enumerate(texts):
        if text:
            prompt = prompts[i // k]
            pairs.append(PreferencePair(id=content_id("eval_sample", prompt, text, ""),
                                        prompt=tuple(prompt), chosen=text, rejected="",
                                        source="eval_sample"))
            rows.append(i)
    return pairs, rows


def _logprobs(cfg, model_path: str, pairs, tok, name: str):
    """(chosen, rejected) summed log-probs [N] each and the chosen responses' token counts."""
    store = common.pair_store(cfg, common.pair_tokenizer(cfg, tok), pairs)
    chosen, rejected = pair_logprobs_pass(cfg, models.from_pretrained(model_path), store, tok,
                                          name=name)
    return chosen, rejected, store.field_lengths("chosen")


def student_movement(cfg, prompts, k: int, ref_path: str,
                     policies: dict[str, tuple[str, list[str]]], ref_texts: list[str]):
    """({method: {heldout_gold_accuracy, heldout_pairs, kl_estimate, kl_samples}},
    {name: per-token NLL under the reference of each sample [P * k], NaN for an empty one})
    for policies = {method: (policy checkpoint, its evaluation samples, prompt-major)} and the
    reference's own samples (name "reference")."""
    tok = models.load_tokenizer(ref_path)
    heldout = _gold_ordered_eval_pairs(cfg)
    h = len(heldout)
    samples = {m: _sample_pairs(prompts, texts, k) for m, (_, texts) in policies.items()}
    samples["reference"] = _sample_pairs(prompts, ref_texts, k)
    # One reference pass over the held-out pairs and every model's samples.
    everything = heldout + [p for pairs, _ in samples.values() for p in pairs]
    ref_a, ref_b, ref_tokens = _logprobs(cfg, ref_path, everything, tok,
                                         "eval/movement/reference")
    nll, spans, start = {}, {}, h
    for name, (pairs, rows) in samples.items():
        n = len(pairs)
        logp, count = ref_a[start:start + n], ref_tokens[start:start + n]
        nll[name] = np.full(len(prompts) * k, np.nan)
        nll[name][rows] = np.where(count > 0, -logp / np.maximum(count, 1), np.nan)
        spans[name], start = (start, n), start + n
    out = {}
    for method, (policy_path, _) in policies.items():
        pairs, _ = samples[method]
        first, n = spans[method]
        pol_a, pol_b, _ = _logprobs(cfg, policy_path, heldout + pairs, tok,
                                    f"eval/movement/{method}")
        out[method] = {
            "heldout_gold_accuracy": (implicit_reward_accuracy(pol_a[:h], pol_b[:h], ref_a[:h],
                                                               ref_b[:h]) if h else None),
            "heldout_pairs": h,
            "kl_estimate": kl_estimate(pol_a[h:], ref_a[first:first + n]) if n else None,
            "kl_samples": n}
    return out, nll
