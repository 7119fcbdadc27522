"""Train batches for the loop: grain over the data package's batch plan, with a leading
micro-batch axis.

The stream is data/loader.plan_dataset (plan_batches of epochs 0, 1, ... a pure function of
seed and epoch) grouped into steps of A micro-batches and read ahead by worker threads. Its
iterator's state is one integer (the next step's index), saved in the checkpoint, so resume
replays exactly the same batches.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import grain
import numpy as np

from cwpo_jax.data import loader


def count_tokens(batch: dict) -> tuple[int, int]:
    """(real tokens, padded token slots) of a batch, prompt included (the way TRL counts)."""
    mask = np.asarray(batch["attention_mask"])
    return int(mask.sum()), int(mask.size)


def add_valid(batch: dict) -> dict:
    """valid [B] = 1 for real rows, 0 for the padding rows collate adds to a short batch."""
    index = batch["pair_index"] if "pair_index" in batch else batch["index"]
    return {**batch, "valid": (np.asarray(index) >= 0).astype(np.float32)}


def stack_micro_batches(batches: Sequence[dict]) -> dict:
    """[A] batches -> one dict with a leading [A] axis; shorter sequences padded to the longest
    (padding columns are masked out, so the numbers do not change)."""
    out = {}
    for key in batches[0]:
        arrays = [np.asarray(b[key]) for b in batches]
        if arrays[0].ndim == 2:  # [rows, T]
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
        out[key] = np.stack(arrays)
    return out


def train_batches(lengths: Sequence[int], collate: Callable, *, batch_size: int, num_steps: int,
                  micro_batches: int = 1, seed: int = 0,
                  shard: tuple[int, int] = (0, 1)) -> grain.DatasetIterator:
    """Iterator over the batches of num_steps steps, each A = micro_batches batches of
    batch_size items stacked on a leading axis (gradient accumulation), shuffled by seed and
    length-grouped; epochs follow each other as one stream. It has get_state / set_state.

    lengths: per-item token length; collate(indices, shard=) -> batch dict (e.g.
    functools.partial(collate_pairs, items, ...)); shard (i, n): this host's rows of every
    global batch (sharding.process_block), see data/loader.plan_dataset.
    """
    if len(lengths) == 0:
        raise ValueError("cannot feed batches from an empty dataset")
    per_epoch = math.ceil(len(lengths) / batch_size)
    epochs = max(1, math.ceil(num_steps * micro_batches / per_epoch))
    ds = loader.plan_dataset(lengths, collate, batch_size=batch_size, seed=seed,
                             num_epochs=epochs, shard=shard).map(add_valid)
    steps = ds[: num_steps * micro_batches].batch(micro_batches, batch_fn=stack_micro_batches)
    return iter(loader.read_ahead(steps))
