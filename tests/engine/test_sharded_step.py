"""A sharded train step equals the unsharded one (loss, gradients, updated params)."""
import jax
import numpy as np
import pytest
from flax import nnx

from cwpo_jax import losses, sharding
from cwpo_jax.train import optim, steps, tasks
from cwpo_jax.train.state import init_train_state, split_model

from tests.engine.toy import ToyLM, pair_batch


def run_steps(mesh, n_steps=2, micro=2):
    model = ToyLM(rngs=nnx.Rngs(0))
    parts = split_model(model)
    optimizer, schedule = optim.make_optimizer(learning_rate=1e-2, total_steps=10, warmup_steps=2)
    state, frozen, state_sh, frozen_sh = init_train_state(parts, optimizer, mesh)
    task = lambda m, b: tasks.preference_task(
        m, b, pair_loss=losses.pair_loss_fn("dpo", beta=0.5), beta=0.5, chunk_size=5)
    step = steps.jit_train_step(
        steps.make_train_step(parts.graphdef, task, optimizer, schedule=schedule),
        mesh, state_sh, frozen_sh)
    history = []
    for i in range(n_steps):
        batches = [pair_batch(10 * i + j) for j in range(micro)]
        stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        state, metrics = step(state, frozen, sharding.shard_batch(stacked, mesh, leading=1))
        history.append({k: float(v) for k, v in metrics.items()})
    return state, history


@pytest.fixture(scope="module")
def reference():
    return run_steps(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))


@pytest.mark.parametrize("shape", [(1, 4, 2), (8, 1, 1), (2, 2, 2)])
def test_sharded_equals_unsharded(reference, shape):
    assert len(jax.devices()) >= 8, "conftest should provide 8 host devices"
    mesh = sharding.make_mesh(*shape)
    state, history = run_steps(mesh)
    ref_state, ref_history = reference
    for got, want in zip(history, ref_history):
        for key in ("loss", "grad_norm", "rewards/accuracies", "rewards/chosen"):
            np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-6, err_msg=key)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=1e-6)
    # the params really are distributed as the rules say
    if mesh.shape["fsdp"] > 1:
        embed_spec = state.params["w_in"].sharding.spec
        assert embed_spec[0] == "fsdp", embed_spec


def test_accumulation_equals_large_batch():
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model = ToyLM(rngs=nnx.Rngs(0))
    parts = split_model(model)
    optimizer, _ = optim.make_optimizer(learning_rate=1e-2, total_steps=10)
    task = lambda m, b: tasks.preference_task(
        m, b, pair_loss=losses.pair_loss_fn("ipo", beta=0.5), beta=0.5)
    step = jax.jit(steps.make_train_step(parts.graphdef, task, optimizer))
    a, b = pair_batch(1, pairs=4), pair_batch(2, pairs=4)
    # one micro-batch of 8 pairs (chosen rows first, then rejected)
    big = {}
    for k in a:
        if a[k].shape[0] == 8:  # [2B] row keys: chosen halves then rejected halves
            big[k] = np.concatenate([a[k][:4], b[k][:4], a[k][4:], b[k][4:]])
        else:
            big[k] = np.concatenate([a[k], b[k]])
    state_big, frozen, *_ = init_train_state(parts, optimizer, mesh)
    state_acc, *_ = init_train_state(parts, optimizer, mesh)
    state_big, m_big = step(state_big, frozen, {k: v[None] for k, v in big.items()})
    state_acc, m_acc = step(state_acc, frozen, {k: np.stack([a[k], b[k]]) for k in a})
    np.testing.assert_allclose(m_acc["loss"], m_big["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_acc["grad_norm"], m_big["grad_norm"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(state_acc.params), jax.tree.leaves(state_big.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_nonfinite_step_leaves_state_unchanged():
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    parts = split_model(ToyLM(rngs=nnx.Rngs(0)))
    optimizer, _ = optim.make_optimizer(learning_rate=1e-2, total_steps=10)
    task = lambda m, b: tasks.preference_task(
        m, b, pair_loss=losses.pair_loss_fn("dpo", beta=0.5), beta=0.5)
    step = jax.jit(steps.make_train_step(parts.graphdef, task, optimizer))
    state, frozen, *_ = init_train_state(parts, optimizer, mesh)
    batch = pair_batch(3)
    batch["ref_logps"][0] = np.nan
    before = [np.asarray(x).copy() for x in jax.tree.leaves(state.params)]
    new_state, metrics = step(state, frozen, {k: v[None] for k, v in batch.items()})
    assert metrics["finite"] == 0.0 and int(new_state.step) == 0
    for x, y in zip(jax.tree.leaves(new_state.params), before):
        np.testing.assert_array_equal(x, y)
