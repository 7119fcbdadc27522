"""All stages from one config, skipping those whose outputs already exist (rerun to resume)."""
from __future__ import annotations

import time

from cwpo_jax.stages import align, annotator, common, evaluate, prepare, score, sft

STAGES = (("data", prepare.run), ("annotator", annotator.run), ("score", score.run),
          ("sft", sft.run), ("align", align.run), ("eval", evaluate.run))


def run(cfg) -> dict:
    timings = {}
    result = None
    for name, fn in STAGES:
        start = time.perf_counter()
        common.log("pipeline", f"stage {name}")
        result = fn(cfg)
        timings[name] = time.perf_counter() - start
    common.log("pipeline", "stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                        timings.items()))
    return result
