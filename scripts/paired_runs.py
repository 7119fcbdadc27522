"""Paired GRA difference between policies evaluated in different run folders.

python scripts/paired_runs.py RUN_A:METHOD_A RUN_B:METHOD_B [RUN_A2:... RUN_B2:...] [--gated]

Each RUN is a folder with eval/samples_<method>.jsonl and eval/samples_reference.jsonl (the
evaluate stage writes both). A pair of runs is compared only if their prompts and reference
samples are identical (the same eval split, sampling keys and reference model), so that the two
policies met the same reference responses: the difference is then paired by prompt. Prints one
JSON line per pair of runs (paired bootstrap over prompts) and, with more than one pair, the
mean of the per-pair differences with a t-interval over pairs (e.g. over seeds).
Use: a setting changed in alignment only (align.normalize, a loss, beta), the other stages
copied from the first run folder. --gated: gated GRA (a sample the evaluate stage flagged as
degenerate counts as the worst; cwpo_jax/degeneration.py).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cwpo_jax.degeneration import gated_scores  # noqa: E402
from cwpo_jax.evaluation import paired_difference, prompt_win_rates, seed_interval  # noqa: E402


def read_samples(run: str, name: str, *, gated: bool = False) -> tuple[list, list, np.ndarray]:
    """(prompt keys, responses [P][k], gold [P, k]) from RUN/eval/samples_NAME.jsonl; gated:
    the gold of a sample flagged degenerate is -inf (samples written before the flag refused)."""
    path = os.path.join(run, "eval", f"samples_{name}.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: not found (run the evaluate stage for {name!r} first)")
    by_prompt: dict = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                key = json.dumps(row["prompt"], sort_keys=True)
                gold = float(row["gold"])
                if gated:
                    gold = float(gated_scores(gold, row["degenerate"]))
                by_prompt.setdefault(key, []).append((row["sample"], row["response"], gold))
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"{path}:{line_no}: malformed sample row ({e})")
    keys = list(by_prompt)
    rows = [sorted(by_prompt[k]) for k in keys]
    if len({len(r) for r in rows}) != 1:
        raise SystemExit(f"{path}: prompts have different numbers of samples")
    return keys, [[r[1] for r in rs] for rs in rows], np.asarray([[r[2] for r in rs]
                                                                 for rs in rows])


def win_rates(run: str, method: str, *, gated: bool = False):
    keys, _, policy = read_samples(run, method, gated=gated)
    ref_keys, ref_texts, reference = read_samples(run, "reference", gated=gated)
    if keys != ref_keys:
        raise SystemExit(f"{run}: {method}'s prompts differ from the reference's")
    return keys, ref_texts, prompt_win_rates(policy, reference)


def compare(a: str, b: str, resamples: int, seed: int = 0, gated: bool = False) -> dict:
    (run_a, method_a), (run_b, method_b) = a.rsplit(":", 1), b.rsplit(":", 1)
    keys_a, ref_a, wins_a = win_rates(run_a, method_a, gated=gated)
    keys_b, ref_b, wins_b = win_rates(run_b, method_b, gated=gated)
    if keys_a != keys_b or ref_a != ref_b:
        raise SystemExit(f"{run_a} and {run_b} do not share prompts and reference samples: "
                         "a paired comparison needs the same eval split, keys and reference")
    return {"a": a, "b": b, "gra_a": float(wins_a.mean()), "gra_b": float(wins_b.mean()),
            **paired_difference(wins_a, wins_b, resamples=resamples, seed=seed)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="RUN_A:METHOD RUN_B:METHOD, repeated")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    parser.add_argument("--gated", action="store_true",
                        help="gated GRA: a degenerate sample counts as the worst")
    args = parser.parse_args()
    if len(args.specs) % 2:
        parser.error("give RUN:METHOD specs in pairs (A then B)")
    diffs = []
    for a, b in zip(args.specs[::2], args.specs[1::2]):
        result = compare(a, b, args.resamples, args.seed, gated=args.gated)
        diffs.append(result["diff"])
        print(json.dumps(result))
    if len(diffs) > 1:
        print(json.dumps({"over_pairs": seed_interval(np.asarray(diffs))}))


if __name__ == "__main__":
    main()
