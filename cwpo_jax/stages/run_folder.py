"""The run folder (cfg.output_dir): where each stage writes, its done marker, the splits.

A stage is done when its folder holds done.json (its summary); a rerun reads the summary back
instead of running the stage again, which is how a killed pipeline resumes.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Callable

import jax

from cwpo_jax.data import PreferencePair
from cwpo_jax.io_utils import hash_path, read_json, write_json
from cwpo_jax.train.hosts import log


def path(cfg, *parts: str) -> str:
    return os.path.join(os.path.abspath(cfg.output_dir), *parts)


def done_marker(cfg, stage: str) -> str:
    return path(cfg, stage, "done.json")


def is_done(cfg, stage: str) -> bool:
    return os.path.exists(done_marker(cfg, stage))


def read_done(cfg, stage: str) -> dict:
    """The summary a finished stage wrote into its done marker."""
    return read_json(done_marker(cfg, stage))


def mark_done(cfg, stage: str, summary: dict) -> None:
    if jax.process_index() == 0:
        write_json(done_marker(cfg, stage), summary)


def once(cfg, stage: str, exists: str, build: Callable[[], dict]) -> dict:
    """The summary of `stage`: read back when it is done ("<exists>; skipping"), else build()
    and mark the stage done with what it returns."""
    if is_done(cfg, stage):
        log(stage, f"{exists}; skipping")
        return read_done(cfg, stage)
    summary = build()
    mark_done(cfg, stage, summary)
    return summary


def stage(name: str, exists: str):
    """Decorator of a stage's run(cfg): once(cfg, name, exists, lambda: run(cfg))."""
    def wrap(run: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(run)
        def run_once(cfg) -> dict:
            return once(cfg, name, exists, lambda: run(cfg))
        return run_once
    return wrap


def load_split(cfg, name: str) -> list[PreferencePair]:
    with open(path(cfg, "data", f"{name}.jsonl"), encoding="utf-8") as f:
        return [PreferencePair.from_json(json.loads(line)) for line in f]


def load_gold(cfg) -> dict | None:
    """{pair id: (gold score of stored chosen, of stored rejected)} in controlled settings."""
    gold_path = path(cfg, "data", "gold.json")
    return read_json(gold_path) if os.path.exists(gold_path) else None


# What one stage leaves for the later ones.


def annotator_identity(cfg) -> dict:
    """The trained annotator's folder and a hash of its checkpoint (the scores file names it)."""
    model_dir = path(cfg, "annotator", "model")
    return {"path": model_dir, "sha256": hash_path(model_dir)}


def scores_path(cfg) -> str:
    return path(cfg, "score", "scores.jsonl")


def reference_path(cfg) -> str:
    """The reference model pi_ref: the sft stage's result (or the model it was given)."""
    return read_done(cfg, "sft")["reference"]
