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
ITEM_KEYS = (*HOST_ONLY_KEYS, "sequence_index")  # which item each row (or segment) is


@functools.lru_cache(maxsize=16)
def _jitted_pass(graphdef, fn: Callable, mesh):
    """One jitted program per (model structure, fn, mesh), kept across passes: a second pass
    over the same model (the annotator's eval pairs, then the unlabelled share) compiles nothing
    new. Shardings come from the committed inputs; activations stay on the batch axes
    (sharding.constrain_batch)."""
    return jax.jit(sharding.mesh_context(
        lambda state, batch: fn(nnx.merge(graphdef, state), batch), mesh))


def batched_pass(model, fn: Callable, *, lengths: Sequence[int], collate: Callable,
                 batch_size: int, mesh, name: str, unit: str = "examples"):
    """Run jitted fn(model, batch) -> pytree of [rows] arrays over all items, sorted by length
    (little padding), no shuffling, sharded over `mesh`; each process collates only its rows of
    every batch (collate(index, shard=), sharding.process_block). Yields (items, outputs) in
    plan order, both for the whole global batch on every process: items holds the batch's
    ITEM_KEYS (which item each row is). fn should be a module-level function, so repeated
    passes reuse its compiled program."""
    n = len(lengths)
    if n == 0:
        return
    graphdef, state = nnx.split(model)
    state = jax.tree.map(jax.device_put, state, variable_shardings(state, mesh))
    run = _jitted_pass(graphdef, fn, mesh)
    num_batches = -(-n // batch_size)
    # Worker threads collate the batches ahead of the loop below.
    batches = loader.read_ahead(loader.plan_dataset(lengths, collate, batch_size=batch_size,
                                                    shuffle=False,
                                                    shard=sharding.process_block(mesh)))
    start, done = time.perf_counter(), 0

    def finish(i, items, out):
        nonlocal done
        out = jax.tree.map(to_host, out)  # waits for this batch's program
        items = {k: to_host(v) for k, v in items.items()}
        done = min(n, done + batch_size)  # unshuffled: every batch is full but the last
        if i % 20 == 0 or i == num_batches - 1:
            rate = done / max(time.perf_counter() - start, 1e-9)
            log(name, f"{done}/{n} {unit} ({rate:.1f} {unit}/s)")
        return items, out

    # One batch in flight: the next batch is dispatched (jit returns before the program
    # finishes) before the previous one's outputs are read back.
    pending = None
    for i, batch in enumerate(batches):
        device_batch = sharding.shard_batch(batch, mesh)
        out = run(state, {k: v for k, v in device_batch.items() if k not in HOST_ONLY_KEYS})
        if pending is not None:
            yield finish(*pending)
        pending = (i, {k: v for k, v in device_batch.items() if k in ITEM_KEYS}, out)
    if pending is not None:
        yield finish(*pending)
