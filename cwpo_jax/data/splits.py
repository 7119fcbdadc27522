"""Deterministic labelled / unlabelled / eval splits keyed by a seeded hash of each pair's id.

A pair's place depends only on (seed, its key, the set of keys), never on file order: the pairs
are ranked by blake2b(seed, key) and cut at the requested fractions, so the counts are exact
(round(n * fraction)) and shuffling the input gives the same three lists in the same order.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Callable, Sequence

from cwpo_jax.data.records import PreferencePair


@dataclasses.dataclass(frozen=True)
class Splits:
    """labelled: human labels train the weak annotator (paper default 30%).
    unlabelled: the weak annotator labels these for alignment; their human labels stay in the
      records for the human baselines and for measuring annotator accuracy.
    eval: held-out pairs whose prompts serve for GRA evaluation."""

    labelled: list[PreferencePair]
    unlabelled: list[PreferencePair]
    eval: list[PreferencePair]

    def sizes(self) -> dict[str, int]:
        return {
            "labelled": len(self.labelled),
            "unlabelled": len(self.unlabelled),
            "eval": len(self.eval),
        }


def seeded_rank(key: str, seed: int) -> bytes:
    """Sort key of one item under a seed (16 bytes of blake2b)."""
    return hashlib.blake2b(
        key.encode("utf-8"), digest_size=16, key=int(seed).to_bytes(8, "little", signed=True)
    ).digest()


def _group_key(group_by: str) -> Callable[[PreferencePair], str]:
    if group_by == "id":
        return lambda p: p.id
    if group_by == "prompt":
        return lambda p: p.prompt_key()
    raise ValueError(f"group_by must be 'id' or 'prompt', got {group_by!r}")


def split_pairs(
    pairs: Sequence[PreferencePair],
    *,
    seed: int,
    labelled: float = 0.3,
    eval: float = 0.0,
    group_by: str = "id",
) -> Splits:
    """Splits pairs into labelled / unlabelled / eval lists.

    labelled, eval: fractions of the pool (of groups when group_by='prompt'); unlabelled gets the
      rest. group_by='prompt' keeps every pair sharing a prompt in one split, so eval prompts are
      never trained on (TL;DR has several comparisons per post).
    Raises on duplicate ids: a split keyed by id needs unique ids.
    """
    if not (0.0 <= labelled <= 1.0 and 0.0 <= eval <= 1.0 and labelled + eval <= 1.0 + 1e-12):
        raise ValueError(
            f"fractions must lie in [0, 1] and sum to at most 1: labelled={labelled}, eval={eval}"
        )
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in collections.Counter(ids).items() if c > 1)
        raise ValueError(
            f"duplicate pair id {dup!r}; ids must be unique to split deterministically"
        )
    key = _group_key(group_by)
    groups: dict[str, list[PreferencePair]] = {}
    for p in pairs:
        groups.setdefault(key(p), []).append(p)
    order = sorted(groups, key=lambda k: seeded_rank(k, seed))
    n = len(order)
    n_eval = round(n * eval)
    n_lab = min(round(n * labelled), n - n_eval)
    # Eval first: growing the labelled fraction never moves a group out of eval.
    buckets = {
        "eval": order[:n_eval],
        "labelled": order[n_eval : n_eval + n_lab],
        "unlabelled": order[n_eval + n_lab :],
    }

    def gather(keys):
        # Members of a group in id order, so the result does not depend on input order.
        return [p for k in keys for p in sorted(groups[k], key=lambda p: p.id)]

    return Splits(
        labelled=gather(buckets["labelled"]),
        unlabelled=gather(buckets["unlabelled"]),
        eval=gather(buckets["eval"]),
    )
