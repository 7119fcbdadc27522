"""Scale figures of the data path: a generated HH-RLHF-schema file of N pairs through prepare
(read, split, write, tokenizer) then tokenising and scoring its unlabelled share on the tiny
random reward model, with wall time, pairs/s and peak RSS per stage.

  python benchmarks/scale_prepare.py --pairs=200000 --workdir=/tmp/scale

Stages, each timed on its own, in one process:
- generate: writes workdir/hh.jsonl once (not a stage of the pipeline; reused when present).
- read:     data.load_preferences(path, format="hh_rlhf"), parsing every transcript.
- prepare:  stages/prepare.run (read again, split by prompt, write the splits, train the tiny
            word tokenizer), as the pipeline runs it.
- tokenise: the unlabelled split into its token store, as the stages tokenise
            (common.pair_store: the stages' PairTokenizer, written under the run folder).
- score:    stages/pair_passes.score_pairs over that store with a random tiny:bert reward model
            (the score stage's pass; packed rows as configs/tiny.py sets them).
Peak RSS per stage: the kernel's high-water mark reset before the stage (process_memory), so
each figure covers that stage alone on top of what earlier stages left resident. Prints one JSON
line at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))

from process_memory import StepWindow  # noqa: E402


def write_hh_file(path: str, n: int, seed: int) -> None:
    """n pairs in the HH-RLHF schema: {"chosen": transcript, "rejected": transcript}."""
    from cwpo_jax.stages.prepare import synthetic_pairs

    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for prompt, a, b in synthetic_pairs(n, seed):
            head = f"\n\nHuman: {prompt}\n\nAssistant: "
            f.write(json.dumps({"chosen": head + a, "rejected": head + b}) + "\n")
    os.replace(tmp, path)


def timed(name: str, results: dict, fn, pairs_of=len):
    window = StepWindow()
    window.open()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    window.close()
    n = pairs_of(out)
    results[name] = {"pairs": n, "seconds": round(seconds, 2),
                     "pairs_per_s": round(n / seconds, 1),
                     "peak_rss_mb": None if window.peak_mb is None else round(window.peak_mb),
                     "rss_before_mb": round(window.before_mb or 0)}
    print(f"[scale] {name}: {results[name]}", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--workdir", default="/tmp/scale_prepare")
    ap.add_argument("--score-batch", type=int, default=64)
    args = ap.parse_args(argv)

    import jax

    from cwpo_jax import models
    from cwpo_jax.data import load_preferences
    from cwpo_jax.stages import common, prepare, run_folder
    from cwpo_jax.stages.model_sources import model_path
    from cwpo_jax.stages.pair_passes import score_pairs
    from cwpo_jax.train.metrics import measure_matmul_peak
    import tiny

    os.makedirs(args.workdir, exist_ok=True)
    data = os.path.join(args.workdir, f"hh_{args.pairs}.jsonl")
    results: dict = {"pairs_in_file": args.pairs, "cpus": os.cpu_count(),
                     "fp32_matmul_peak_gflops": round(measure_matmul_peak() / 1e9, 1)}
    if not os.path.exists(data):
        timed("generate", results, lambda: write_hh_file(data, args.pairs, 0) or range(args.pairs))
    cfg = tiny.get_config()
    cfg.data.source, cfg.data.format, cfg.data.path = "file", "hh_rlhf", data
    cfg.data.num_pairs = 0
    cfg.data.labelled_fraction, cfg.data.eval_fraction = 0.05, 0.05
    cfg.score.batch_size = args.score_batch
    cfg.output_dir = os.path.join(args.workdir, f"run_{os.getpid()}")

    timed("read", results, lambda: load_preferences(data, format="hh_rlhf")[0])
    timed("prepare", results, lambda: prepare.run(cfg),
          pairs_of=lambda s: sum(s["sizes"].values()))
    tok = models.load_tokenizer(run_folder.path(cfg, "data", "tokenizer"))
    pairs = run_folder.load_split(cfg, "unlabelled")
    tokenized = timed("tokenise", results,
                      lambda: common.pair_store(cfg, common.pair_tokenizer(cfg, tok), pairs))
    rm = models.reward_model_from_pretrained(model_path(cfg, cfg.annotator.model), seed=cfg.seed)
    timed("score", results, lambda: score_pairs(cfg, rm, tokenized, tok, "score")[0])
    results["max_stage_peak_rss_mb"] = max(
        (r["peak_rss_mb"] or 0) for r in results.values() if isinstance(r, dict))
    results["jax"] = jax.__version__
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
