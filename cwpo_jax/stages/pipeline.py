"""All stages from one config, skipping those whose outputs already exist (rerun to resume).

With sweep.runs set, the whole pipeline runs once per (labelled_fraction, seed) in its own run
folder output_dir/frac<fraction>_seed<seed>/ (a killed sweep resumes where it stopped), all on
one preference pool (config.sweep_run_config), and stages/sweep.py aggregates the runs.
"""
from __future__ import annotations

import time

from cwpo_jax.stages import align, annotator, evaluate, preflight, prepare, score, sft, sweep
from cwpo_jax.stages.config import sweep_run_config
from cwpo_jax.train.hosts import log, sync

STAGES = (("data", prepare.run), ("annotator", annotator.run), ("score", score.run),
          ("sft", sft.run), ("align", align.run), ("eval", evaluate.run))


def run_one(cfg) -> dict:
    timings = {}
    result = None
    for name, fn in STAGES:
        start = time.perf_counter()
        log("pipeline", f"stage {name}")
        result = fn(cfg)
        sync(f"stage {name}")  # process 0's outputs are on disk before anyone reads them
        if name == "data":
            preflight.check_prepared_splits(cfg)  # refuse splits too small before any training
        timings[name] = time.perf_counter() - start
    log("pipeline", "stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return result


def run(cfg) -> dict:
    if not cfg.sweep.runs:
        return run_one(cfg)
    runs = []
    for i, (fraction, seed) in enumerate(cfg.sweep.runs):
        log("pipeline", f"sweep run {i + 1}/{len(cfg.sweep.runs)}: labelled fraction "
                        f"{fraction}, seed {seed}")
        runs.append((fraction, seed, run_one(sweep_run_config(cfg, fraction, seed))))
    return sweep.write(cfg, runs)
