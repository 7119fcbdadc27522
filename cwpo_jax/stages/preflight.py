"""Checks of a run's inputs that refuse bad ones before any compute, each with one line naming
the field and what would fix it: paths of data and models (before the first stage), and split
sizes (after the data stage, before any training)."""
from __future__ import annotations

import contextlib
import glob
import os
import re

from cwpo_jax import assets
from cwpo_jax.data.readers import HUB_DATASETS, local_files
from cwpo_jax.io_utils import read_json
from cwpo_jax.stages import run_folder
from cwpo_jax.stages.config import eval_judge
from cwpo_jax.stages.model_sources import TINY_CONFIGS

JUDGES = ("vader", "lexicon")


class InputError(ValueError):
    """An input named by the config is missing, unreadable or too small (one line)."""


def _model_problem(spec: str) -> str | None:
    """Why a model spec cannot load (None when it can, or when only the hub can tell)."""
    if spec.startswith("tiny:"):
        family = spec.split(":", 1)[1]
        return None if family in TINY_CONFIGS else (
            f"unknown tiny model family {family!r}; expected one of "
            f"{['tiny:' + f for f in TINY_CONFIGS]}")
    try:
        path = assets.resolve(spec)
    except (ValueError, FileNotFoundError) as e:
        return str(e)
    if os.path.exists(path):
        if not os.access(path, os.R_OK):
            return f"{path} is not readable"
        if path.endswith(".gguf"):
            with open(path, "rb") as f:  # the magic only: parsing the header takes seconds
                if f.read(4) != b"GGUF":
                    return f"{path} is not a GGUF file (its first bytes are not 'GGUF')"
        elif not os.path.exists(os.path.join(path, "config.json")):
            return f"{path} is not an HF model folder (it has no config.json)"
        return None
    if assets.is_local_path(path):  # the rule models.resolve_path applies
        return (f"{path!r} does not exist (from {os.getcwd()}); give an HF model folder, a .gguf "
                "file, a hub id 'owner/name', 'pkg:NAME' or 'tiny:<family>'")
    return None


def _judge_problem(name: str, allow_none: bool = False) -> str | None:
    """Why a gold judge cannot load; `none` (no judge) only where allow_none."""
    if name.startswith("reward_model:"):
        path = name.split(":", 1)[1]
        return "needs a path: reward_model:PATH" if not path else _model_problem(path)
    if name in JUDGES or (allow_none and name == "none"):
        return None
    return (f"unknown gold judge {name!r}; expected 'vader', 'lexicon', 'reward_model:PATH'"
            + (" or 'none'" if allow_none else ""))


def _data_problem(path: str, split: str | None) -> str | None:
    if path.startswith(("tfds:", "hf:")) or path in HUB_DATASETS:
        return None  # read from TFDS / the hub; their loaders say what is missing
    if not (os.path.exists(path) or glob.has_magic(path)):
        return (f"{path!r} is not a file, folder or glob (from {os.getcwd()}); give a local "
                "path, 'hf:owner/name' or 'tfds:name'")
    try:
        for f in local_files(path, split):
            open(f, "rb").close()
    except OSError as e:  # nothing matched, or a file that cannot be opened
        return str(e)
    return None


def check_inputs(cfg) -> None:
    """Raise InputError for the first data path, model or gold judge that cannot load."""
    fields = [("annotator.model", _model_problem(cfg.annotator.model)),
              ("sft.model", _model_problem(cfg.sft.model)),
              ("evaluate.gold_judge", _judge_problem(eval_judge(cfg), allow_none=True))]
    if not run_folder.is_done(cfg, "data"):  # only the data stage reads these
        fields.insert(0, ("data.path", _data_problem(cfg.data.path, cfg.data.split or None))
                      if cfg.data.source == "file" else
                      ("data.gold_judge", _judge_problem(cfg.data.gold_judge)))
    for field, problem in fields:
        if problem:
            raise InputError(f"{field}: {problem}")


def _needs(cfg):
    """(stage, splits it reads, fewest pairs it can use, the setting asking for them, the fix)."""
    needs = [("annotator", ("labelled",), cfg.annotator.train.batch_size,
              "annotator.train.batch_size", "raise data.labelled_fraction"),
             ("score", ("unlabelled",), 1, "the score stage",
              "lower data.labelled_fraction or data.eval_fraction")]
    if cfg.sft.enabled:
        needs.append(("sft", ("labelled", "unlabelled"), cfg.sft.train.batch_size,
                      "sft.train.batch_size", "lower data.eval_fraction"))
    # Every method but human_all trains on the unlabelled split alone.
    needs += [("align", ("unlabelled",), cfg.align.train.batch_size, "align.train.batch_size",
               "lower data.labelled_fraction or data.eval_fraction"),
              ("eval", ("eval",), 1, "the eval stage", "raise data.eval_fraction")]
    return needs


def _origin(cfg, summary: dict) -> str:
    """Where the pairs came from, with the reader's counts by skip reason."""
    if "read_report" not in summary:
        return f"data.source={cfg.data.source} (data.num_pairs={cfg.data.num_pairs})"
    # ReadReport's text: "read N rows: kept K, skipped S", then "  reason: n  e.g. ..." lines.
    first, *rest = summary["read_report"].splitlines()
    reasons = [f"{m.group(1)} {m.group(2)}" for line in rest
               if (m := re.match(r"\s+(\S+): (\d+)", line))]
    return f"{cfg.data.path} ({first}" + (f": {', '.join(reasons)})" if reasons else ")")


def check_splits(cfg, stages=("annotator", "score", "sft", "align", "eval")) -> None:
    """Raise InputError when a split that one of `stages` reads is empty or smaller than one
    of its batches, counted from the data stage's summary."""
    marker = run_folder.done_marker(cfg, "data")
    if not os.path.exists(marker):
        raise InputError(f"no prepared splits: {marker} is missing; run launch/prepare.py or "
                         "launch/pipeline.py with this config first")
    summary = read_json(marker)
    for stage, splits, need, setting, fix in _needs(cfg):
        have = sum(summary["sizes"][s] for s in splits)
        if stage in stages and have < need:
            lower = f" or lower {setting}" if setting.endswith("batch_size") else ""
            raise InputError(
                f"{' + '.join(splits)} split{'s have' if len(splits) > 1 else ' has'} {have} "
                f"pairs from {_origin(cfg, summary)}; need at least {need} for {setting}: add "
                f"pairs, {fix}{lower}")


def check_prepared_splits(cfg) -> None:
    """check_splits right after the data stage: on refusal its done marker is removed, so the
    refused run does not count as prepared and the next run reads the data again."""
    try:
        check_splits(cfg)
    except InputError:
        with contextlib.suppress(FileNotFoundError):  # another host removed it first
            os.remove(run_folder.done_marker(cfg, "data"))
        raise
