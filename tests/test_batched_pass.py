"""train.passes.batched_pass: every item once, in plan order, outputs equal to a direct call,
and the next batch dispatched before the previous one's outputs are handed back (batches are
collated ahead by grain's worker threads)."""
import numpy as np
from flax import nnx

from cwpo_jax.data.batching import plan_batches
from cwpo_jax import sharding
from cwpo_jax.stages import common
from cwpo_jax.train import passes
from cwpo_jax.stages.defaults import defaults

ROWS = 4


def _project(model, batch):
    return model(batch["x"])[:, 0]


def test_batched_pass_covers_items_in_order_with_one_batch_in_flight(monkeypatch):
    cfg = defaults()
    cfg.mesh.data = 1
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    items = rng.standard_normal((10, 3)).astype(np.float32)
    lengths = list(rng.integers(1, 9, len(items)))
    events = []
    collated = []
    shard_batch = sharding.shard_batch

    def dispatching(batch, mesh):  # the model's inputs and the rows' item indices
        events.append("dispatch")
        return shard_batch(batch, mesh)

    monkeypatch.setattr(sharding, "shard_batch", dispatching)

    def collate(index, *, shard):
        assert shard == (0, 1)
        collated.append(list(index))
        x = np.zeros((ROWS, 3), np.float32)
        x[:len(index)] = items[index]
        padded = np.full(ROWS, -1)
        padded[:len(index)] = index
        return {"x": x, "index": padded}

    seen = np.zeros(len(items), int)
    yielded = []
    for batch, out in passes.batched_pass(model, _project, lengths=lengths, collate=collate,
                                          batch_size=ROWS, mesh=common.mesh_for(cfg),
                                          name="test"):
        events.append("yield")
        taken = batch["index"] >= 0
        np.testing.assert_allclose(out[taken], np.asarray(model(items[batch["index"][taken]]))[:, 0],
                                   rtol=1e-6)
        seen[batch["index"][taken]] += 1
        yielded.append(list(batch["index"][taken]))

    plan = plan_batches(lengths, ROWS, shuffle=False)
    assert yielded == [list(index) for index in plan]
    assert (seen == 1).all()
    assert sorted(collated) == sorted(yielded)  # every batch collated once
    # dispatch 0, dispatch 1, yield 0, dispatch 2, yield 1, ..., yield last
    assert events == ["dispatch", "dispatch"] + ["yield", "dispatch"] * (len(plan) - 2) \
        + ["yield", "yield"]
