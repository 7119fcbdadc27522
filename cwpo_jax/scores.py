"""The scores file: the weak annotator's output over the unlabelled pairs, checked on read.

JSONL. Line 1 is a header {"format", "annotator", "dataset_ids_sha256", "count"}; then one row
per pair {"id", "score_a", "score_b", "weak_label", "c1", "c2", "c3"}, where a is the response
stored as chosen (the human label's order) and weak_label is True when the annotator prefers a.
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np

from cwpo_jax import confidence as conf_lib
from cwpo_jax.io_utils import atomic_open, hash_json

FORMAT = "cwpo_scores/1"


class ScoresError(ValueError):
    """A scores file that must not be used: names the file, the row and what is wrong."""


def ids_digest(ids: Sequence[str]) -> str:
    return hash_json(list(ids))


def write_scores(path: str, ids: Sequence[str], score_a, score_b, *, annotator: dict,
                 tau: float = 1.0) -> None:
    score_a, score_b = np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)
    if not (len(ids) == score_a.size == score_b.size):
        raise ScoresError(f"{path}: {len(ids)} ids but {score_a.size}/{score_b.size} scores")
    if not (np.isfinite(score_a).all() and np.isfinite(score_b).all()):
        bad = int(np.flatnonzero(~(np.isfinite(score_a) & np.isfinite(score_b)))[0])
        raise ScoresError(f"{path}: annotator produced a non-finite score for pair {ids[bad]!r}")
    labels = np.asarray(conf_lib.weak_labels(score_a, score_b))
    confs = {k: np.asarray(conf_lib.confidence(score_a, score_b, kind=k, tau=tau), np.float64)
             for k in conf_lib.CONFIDENCE_KINDS}
    header = {"format": FORMAT, "annotator": annotator, "dataset_ids_sha256": ids_digest(ids),
              "count": len(ids), "tau": tau}
    with atomic_open(path) as f:
        f.write(json.dumps(header) + "\n")
        for i, pair_id in enumerate(ids):
            row = {"id": pair_id, "score_a": float(score_a[i]), "score_b": float(score_b[i]),
                   "weak_label": bool(labels[i])}
            row.update({k: float(confs[k][i]) for k in confs})
            f.write(json.dumps(row) + "\n")


def read_scores(path: str, *, expected_ids: Sequence[str] | None = None,
                expected_annotator: dict | None = None) -> dict:
    """Read and validate; returns {"header", "ids", "score_a", "score_b", "weak_label", "c1", ...}
    with rows in `expected_ids` order when given. Refuses (ScoresError) non-finite scores,
    confidences outside [0, 1], duplicated, missing or extra ids, a different dataset or a
    different annotator."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise ScoresError(f"{path}: not a UTF-8 text file ({e})") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines:
        raise ScoresError(f"{path}: empty scores file")
    try:
        header = json.loads(lines[0])
    except (ValueError, RecursionError) as e:
        raise ScoresError(f"{path}:1: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ScoresError(f"{path}:1: header is a {type(header).__name__}, expected an object")
    if header.get("format") != FORMAT:
        raise ScoresError(f"{path}:1: format {header.get('format')!r}, expected {FORMAT!r}")
    if expected_annotator is not None and header.get("annotator") != expected_annotator:
        raise ScoresError(f"{path}: written by annotator {header.get('annotator')}, expected "
                          f"{expected_annotator}; rerun the score stage")
    rows, seen = [], {}
    for lineno, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
            pair_id = row["id"]
            if not isinstance(pair_id, str):
                raise TypeError(f"id is {type(pair_id).__name__}, expected str")
            values = []
            for k in ("score_a", "score_b", *conf_lib.CONFIDENCE_KINDS):
                if isinstance(row[k], bool) or not isinstance(row[k], (int, float)):
                    raise TypeError(f"{k} is {type(row[k]).__name__}, expected a number")
                values.append(float(row[k]))
            label = row["weak_label"]
        except (KeyError, TypeError, ValueError, RecursionError) as e:
            raise ScoresError(f"{path}:{lineno}: malformed row ({type(e).__name__}: {e})") from None
        if not all(math.isfinite(v) for v in values):
            raise ScoresError(f"{path}:{lineno}: non-finite score or confidence for id {pair_id!r}")
        if not all(0.0 <= v <= 1.0 for v in values[2:]):
            raise ScoresError(f"{path}:{lineno}: confidence outside [0, 1] for id {pair_id!r}")
        if not isinstance(label, bool) or label != (values[0] >= values[1]):
            raise ScoresError(f"{path}:{lineno}: weak_label {label!r} disagrees with the scores "
                              f"for id {pair_id!r}")
        if pair_id in seen:
            raise ScoresError(f"{path}:{lineno}: id {pair_id!r} duplicated (first on line "
                              f"{seen[pair_id]})")
        seen[pair_id] = lineno
        rows.append((pair_id, values, label))
    if header.get("count") != len(rows):
        raise ScoresError(f"{path}: header says {header.get('count')} rows, file has {len(rows)} "
                          "(truncated?)")
    by_id = {r[0]: r for r in rows}
    order = [r[0] for r in rows] if expected_ids is None else list(expected_ids)
    if expected_ids is not None:
        missing = [i for i in order if i not in by_id]
        extra = set(by_id) - set(order)
        if missing or extra:
            raise ScoresError(
                f"{path}: scores do not match the dataset: {len(missing)} ids missing (e.g. "
                f"{missing[:3]}), {len(extra)} unknown (e.g. {sorted(extra)[:3]}); the scores "
                "were made for other data")
    values = np.asarray([by_id[i][1] for i in order], np.float64).reshape(len(order), 5)
    out = {"header": header, "ids": order,
           "weak_label": np.asarray([by_id[i][2] for i in order], bool),
           "score_a": values[:, 0], "score_b": values[:, 1]}
    for j, kind in enumerate(conf_lib.CONFIDENCE_KINDS):
        out[kind] = values[:, 2 + j]
    return out
