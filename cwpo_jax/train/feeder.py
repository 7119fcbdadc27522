"""Resumable stream of train batches with a leading micro-batch axis, for the loop.

Wraps the data package's pure batch plan (`plan_batches`, a function of seed and epoch) and a
collate function; its whole state is (epoch, position), so a checkpoint stores two integers and
resume replays exactly the same batches.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cwpo_jax.data.batching import plan_batches

Collate = Callable[[Sequence[int]], dict]


def count_tokens(batch: dict) -> tuple[int, int]:
    """(real tokens, padded token slots) of a batch, prompt included (the way TRL counts)."""
    mask = np.asarray(batch["attention_mask"])
    return int(mask.sum()), int(mask.size)


def add_valid(batch: dict) -> dict:
    """valid [B] = 1 for real rows, 0 for the padding rows collate adds to a short batch."""
    index = batch["pair_index"] if "pair_index" in batch else batch["index"]
    return {**batch, "valid": (np.asarray(index) >= 0).astype(np.float32)}


def stack_micro_batches(batches: list[dict]) -> dict:
    """[A] batches -> one dict with a leading [A] axis; shorter sequences padded to the longest
    (padding columns are masked out, so the numbers do not change)."""
    out = {}
    for key in batches[0]:
        arrays = [np.asarray(b[key]) for b in batches]
        if arrays[0].ndim == 2:  # [rows, T]
            width = max(a.shape[1] for a in arrays)
            fill = 0
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)
                      for a in arrays]
        out[key] = np.stack(arrays)
    return out


class EpochFeeder:
    """Endless, deterministic, resumable batches over `num_items` items.

    lengths: per-item token length (for length-grouped batches with little padding);
    collate(indices) -> batch dict (e.g. functools.partial(collate_pairs, items, ...));
    micro_batches: A, the gradient-accumulation factor (each step takes A batches).
    """

    def __init__(self, lengths: Sequence[int], collate: Collate, *, batch_size: int,
                 micro_batches: int = 1, seed: int = 0, shuffle: bool = True):
        if len(lengths) == 0:
            raise ValueError("cannot feed batches from an empty dataset")
        self.lengths = np.asarray(lengths)
        self.collate, self.batch_size, self.micro_batches = collate, batch_size, micro_batches
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0
        self._plan_epoch, self._plan = None, None

    def _epoch_plan(self):
        if self._plan_epoch != self.epoch:
            self._plan = plan_batches(self.lengths, self.batch_size, seed=self.seed,
                                      epoch=self.epoch, shuffle=self.shuffle)
            self._plan_epoch = self.epoch
        return self._plan

    def _next_batch(self) -> dict:
        plan = self._epoch_plan()
        if self.position >= len(plan):
            self.epoch, self.position = self.epoch + 1, 0
            plan = self._epoch_plan()
        index = plan[self.position]
        self.position += 1
        return add_valid(self.collate(index))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return stack_micro_batches([self._next_batch() for _ in range(self.micro_batches)])

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
