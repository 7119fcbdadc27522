"""A real model family through the sharded step: a tiny Llama (GQA, tied head) on fsdp x tensor
meshes gives the same loss, gradient norm and updated params as one device; bf16 compute keeps
fp32 master params and stays close to fp32."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cwpo_jax import losses, models, sharding
from cwpo_jax.stages import model_sources, prepare
from cwpo_jax.train import optim, steps, tasks
from cwpo_jax.train.state import init_train_state, split_model

from tests.engine.toy import pair_batch


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    prepare.train_word_tokenizer([" ".join(f"w{i}" for i in range(60)), "Human:", "Assistant:"],
                                 str(d / "tok"))
    model_sources.create_tiny_model("llama", str(d / "m"), models.load_tokenizer(str(d / "tok")), seed=0)
    return str(d / "m")


def one_step(model_dir, mesh, compute_dtype=None, optimizer=None, scan_layers=False):
    model = models.from_pretrained(model_dir)
    if scan_layers:
        models.stack_layers(model)
    parts = split_model(model)
    if optimizer is None:
        optimizer, _ = optim.make_optimizer(learning_rate=1e-2, total_steps=4)
    state, frozen, state_sh, frozen_sh = init_train_state(parts, optimizer, mesh)
    task = functools.partial(tasks.preference_task, pair_loss=losses.pair_loss_fn("dpo", beta=0.5),
                             beta=0.5, chunk_size=8)
    step = steps.jit_train_step(steps.make_train_step(parts.graphdef, task, optimizer,
                                                      compute_dtype=compute_dtype),
                                mesh, state_sh, frozen_sh)
    batch = {k: v[None] for k, v in pair_batch(4, pairs=8, vocab=model.config.vocab_size).items()}
    state, metrics = step(state, frozen, sharding.shard_batch(batch, mesh, leading=1))
    return state, {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("shape", [(1, 4, 2), (2, 2, 2)])
def test_sharded_llama_step_equals_single_device(tiny_llama_dir, shape):
    # Plain SGD with lr 1 after the clip: the update is the clipped gradient itself, so the
    # params compare the sharded gradients element by element. (A first Adam step moves each
    # param by ~lr * sign(g): where g is ~1e-7, float reordering noise flips it by up to lr.)
    sgd = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))
    ref_state, ref = one_step(tiny_llama_dir, sharding.make_mesh(1, 1, 1,
                                                                 devices=jax.devices()[:1]),
                              optimizer=sgd)
    state, got = one_step(tiny_llama_dir, sharding.make_mesh(*shape), optimizer=sgd)
    for key in ("loss", "grad_norm", "rewards/margins"):
        np.testing.assert_allclose(got[key], ref[key], rtol=5e-5, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs


def test_sharded_scanned_layers_equal_unrolled_single_device(tiny_llama_dir):
    sgd = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))
    ref_state, ref = one_step(tiny_llama_dir, sharding.make_mesh(1, 1, 1,
                                                                 devices=jax.devices()[:1]),
                              optimizer=sgd)
    state, got = one_step(tiny_llama_dir, sharding.make_mesh(2, 2, 2), optimizer=sgd,
                          scan_layers=True)
    for key in ("loss", "grad_norm", "rewards/margins"):
        np.testing.assert_allclose(got[key], ref[key], rtol=5e-5, atol=1e-6, err_msg=key)
    ref_params, params = nnx.to_pure_dict(ref_state.params), nnx.to_pure_dict(state.params)
    for i, layer in ref_params["layers"].items():
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[i], b, rtol=1e-5,
                                                             atol=1e-6),
                     params["layers"]["layer"], layer)
    kernel = state.params["layers"]["layer"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == sharding.P(None, "fsdp", "tensor")  # layer axis unsharded


def test_bf16_compute_keeps_fp32_master_params(tiny_llama_dir):
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    _, ref = one_step(tiny_llama_dir, mesh)
    state, got = one_step(tiny_llama_dir, mesh, compute_dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert got["finite"] == 1.0
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=0.05)
    assert got["loss"] != ref["loss"]  # bf16 really ran
