"""grain pipelines over tokenised items: seeded length-grouped batches with resumable state.

The dataset's elements are whole batches. Element k of a run is batch k % per_epoch of the plan
for epoch k // per_epoch (batching.plan_batches), so the order is a pure function of (seed,
epoch, lengths) and a grain iterator's state, a position, restores it exactly:

  ds = pair_dataset(items, batch_size=8, buckets=(64, 128), pad_id=0, seed=0, num_epochs=3)
  it = iter(ds.to_iter_dataset())
  batch = next(it); state = it.get_state()     # save with the train checkpoint
  it2 = iter(ds.to_iter_dataset()); it2.set_state(state)   # continues with the next batch
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, Sequence

import grain
import numpy as np

from cwpo_jax.data import batching, token_store
from cwpo_jax.data.tokenize import TokenizedPair, TokenizedSequence


class BatchPlan:
    """Random-access sequence of index arrays over num_epochs (a grain data source)."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        num_epochs: int,
        shuffle: bool,
        window: int,
        drop_remainder: bool,
    ):
        if batch_size <= 0 or num_epochs <= 0:
            raise ValueError(f"batch_size ({batch_size}) and num_epochs ({num_epochs}) must be > 0")
        self._lengths = np.asarray(lengths)
        self._kw = dict(
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            window=window,
            drop_remainder=drop_remainder,
        )
        self.num_epochs = num_epochs
        self._cache: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.per_epoch = len(self._plan(0))

    def _plan(self, epoch: int) -> list[np.ndarray]:
        with self._lock:  # grain reads with several threads
            plan = self._cache.get(epoch)
            if plan is None:
                plan = batching.plan_batches(self._lengths, epoch=epoch, **self._kw)
                if len(self._cache) >= 2:  # prefetch spans at most one epoch boundary
                    del self._cache[min(self._cache)]
                self._cache[epoch] = plan
            return plan

    def __getstate__(self):  # picklable for grain worker processes
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_cache")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cache, self._lock = {}, threading.Lock()

    def __len__(self) -> int:
        return self.per_epoch * self.num_epochs

    def __repr__(self) -> str:  # short: grain prints sources in its stats
        return f"BatchPlan(items={len(self._lengths)}, epochs={self.num_epochs}, **{self._kw})"

    def __getitem__(self, k: int) -> np.ndarray:
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self._plan(k // self.per_epoch)[k % self.per_epoch]


class Collate:
    """index array -> collate(index), named by the collate function: grain names transforms by
    repr() on first access, and a functools.partial's repr would print every item it holds."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, index: np.ndarray) -> dict:
        return self.collate(index)

    def __repr__(self) -> str:
        return collate_name(self.collate)  # a partial's function, not its items


def collate_name(fn: Callable) -> str:
    while hasattr(fn, "func"):  # a functools.partial's function
        fn = fn.func
    return getattr(fn, "__name__", None) or repr(fn)


def plan_dataset(
    lengths: Sequence[int],
    collate: Callable,
    *,
    batch_size: int,
    seed: int = 0,
    num_epochs: int = 1,
    shuffle: bool = True,
    window: int = 32,
    drop_remainder: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> grain.MapDataset:
    """Element k: collate(index array k of the BatchPlan, shard=shard), the batches of
    plan_batches for epochs 0, 1, ... in order (the short last batch of an epoch padded by
    collate). Every batching.collate_* takes shard: with shard (i, n) a host materialises only
    rows [i*B/n, (i+1)*B/n) of every global batch of B, at the global batch's length;
    sharding.process_block(mesh) is the (i, n) of this process's devices."""
    host, hosts = shard
    if not (0 <= host < hosts and batch_size % hosts == 0):
        raise ValueError(
            f"shard {shard}: need 0 <= index < count and batch_size ({batch_size}) "
            "divisible by the count"
        )
    plan = BatchPlan(lengths, batch_size, seed=seed, num_epochs=num_epochs, shuffle=shuffle,
                     window=window, drop_remainder=drop_remainder)
    return grain.MapDataset.source(plan).map(Collate(functools.partial(collate, shard=shard)))


def read_ahead(ds: grain.MapDataset, *, threads: int = 4, buffer: int = 8) -> grain.IterDataset:
    """ds read by `threads` worker threads, up to `buffer` elements ahead of the consumer, in
    order: batches are collated while the device computes. Its iterator's get_state() is the
    next element's index, exact whatever is buffered. A small buffer: an element is a whole
    batch, and grain's default (500) would hold hundreds of them."""
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer))


def pair_dataset(
    items: Sequence[TokenizedPair],
    *,
    batch_size: int,
    buckets: Sequence[int],
    pad_id: int,
    seed: int = 0,
    num_epochs: int = 1,
    shuffle: bool = True,
    window: int = 32,
    drop_remainder: bool = False,
    swap: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    shard: tuple[int, int] = (0, 1),
) -> grain.MapDataset:
    """Pair batches (see batching.collate_pairs). swap [N] bool and weights [N] float32 are
    indexed like `items` (CW-PO: weak-label orientation and confidence).

    shard=(jax.process_index(), jax.process_count()): every host runs the same plan and returns
    rows [i*B/n, (i+1)*B/n) of each global batch of B pairs, all with the global batch's length.
    """
    n = len(items)
    if swap is not None:
        swap = batching._check_alignment("swap", swap, n).astype(bool)
    if weights is not None:
        weights = batching._check_alignment("weights", weights, n).astype(np.float32)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("weights must be finite and >= 0")
    collate = functools.partial(
        batching.collate_pairs, items, batch_size=batch_size, buckets=tuple(buckets),
        pad_id=pad_id, swap=swap, weights=weights
    )
    return plan_dataset(
        token_store.item_lengths(items),
        collate,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        shuffle=shuffle,
        window=window,
        drop_remainder=drop_remainder,
        shard=shard,
    )


def sequence_dataset(
    items: Sequence[TokenizedSequence],
    *,
    batch_size: int,
    buckets: Sequence[int],
    pad_id: int,
    seed: int = 0,
    num_epochs: int = 1,
    shuffle: bool = True,
    window: int = 32,
    drop_remainder: bool = False,
    weights: np.ndarray | None = None,
    shard: tuple[int, int] = (0, 1),
) -> grain.MapDataset:
    """Single-sequence batches (SFT, scoring; see batching.collate_sequences); shard as in
    pair_dataset."""
    if weights is not None:
        weights = batching._check_alignment("weights", weights, len(items)).astype(np.float32)
    collate = functools.partial(batching.collate_sequences, items, batch_size=batch_size,
                                buckets=tuple(buckets), pad_id=pad_id, weights=weights)
    return plan_dataset(
        token_store.item_lengths(items),
        collate,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        shuffle=shuffle,
        window=window,
        drop_remainder=drop_remainder,
        shard=shard,
    )


def prompt_dataset(
    items: Sequence[TokenizedSequence],
    *,
    batch_size: int,
    buckets: Sequence[int],
    pad_id: int,
    shard: tuple[int, int] = (0, 1),
) -> grain.MapDataset:
    """Left-padded prompt batches for sampling, grouped by length, one pass, no shuffle."""
    collate = functools.partial(batching.collate_prompts, items, batch_size=batch_size,
                                buckets=tuple(buckets), pad_id=pad_id)
    return plan_dataset(
        [len(s.prompt) for s in items],
        collate,
        batch_size=batch_size,
        seed=0,
        num_epochs=1,
        shuffle=False,
        window=1,
        drop_remainder=False,
        shard=shard,
    )
