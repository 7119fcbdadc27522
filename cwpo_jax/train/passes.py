"""batched_pass(): a jitted forward pass over many items, in length-sorted batches, no shuffling,
read through the same grain pipeline as training (data/loader.plan_dataset)."""
from __future__ import annotations

import functools
import time
from typing import Callable, Sequence

import jax
from flax import nnx

from cwpo_jax import sharding
from cwpo_jax.data import loader
from cwpo_jax.train.hosts import log, to_host
from cwpo_jax.train.state import variable_shardings

HOST_ONLY_KEYS = ("pair_index", "index", "row_index")  # batch bookkeeping the model never reads


@functools.lru_cache(maxsize=16)
def _jitted_pass(graphdef, fn: Callable):
    """One jitted program per (model structure, fn), kept across passes: a second pass over the
    same model (the annotator's eval pairs, then the unlabelled share) compiles nothing new.
    Shardings come from the committed inputs."""
    return jax.jit(lambda state, batch: fn(nnx.merge(graphdef, state), batch))


def batched_pass(model, fn: Callable, *, lengths: Sequence[int], collate: Callable,
                 batch_size: int, mesh, name: str, unit: str = "examples"):
    """Run jitted fn(model, batch) -> pytree of [rows] arrays over all items, sorted by length
    (little padding), no shuffling, sharded over `mesh`. Yields (host batch, host outputs) in
    plan order. fn should be a module-level function, so repeated passes reuse its compiled
    program."""
    n = len(lengths)
    if n == 0:
        return
    graphdef, state = nnx.split(model)
    state = jax.tree.map(jax.device_put, state, variable_shardings(state, mesh))
    run = _jitted_pass(graphdef, fn)
    num_batches = -(-n // batch_size)
    # Worker threads collate the batches ahead of the loop below.
    batches = loader.read_ahead(loader.plan_dataset(lengths, collate, batch_size=batch_size,
                                                    shuffle=False))
    start, done = time.perf_counter(), 0

    def finish(i, batch, out):
        nonlocal done
        out = jax.tree.map(to_host, out)  # waits for this batch's program
        done = min(n, done + batch_size)  # unshuffled: every batch is full but the last
        if i % 20 == 0 or i == num_batches - 1:
            rate = done / max(time.perf_counter() - start, 1e-9)
            log(name, f"{done}/{n} {unit} ({rate:.1f} {unit}/s)")
        return batch, out

    # One batch in flight: the next batch is dispatched (jit returns before the program
    # finishes) before the previous one's outputs are read back.
    pending = None
    for i, batch in enumerate(batches):
        device_batch = sharding.shard_batch(
            {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}, mesh)
        out = run(state, device_batch)
        if pending is not None:
            yield finish(*pending)
        pending = (i, batch, out)
    if pending is not None:
        yield finish(*pending)
