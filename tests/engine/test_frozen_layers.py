"""Frozen bottom layers run once: training from their cached output gives the log-probs, loss
and LoRA gradients of running the whole stack, with swapped pairs and padding rows."""
import functools
import os
import types

import jax
import numpy as np
import pytest
from flax import nnx

from cwpo_jax import losses, models
from cwpo_jax.data import collate_packed_pairs
from cwpo_jax.stages import frozen_layers
from cwpo_jax.stages.pair_passes import pair_logprobs_pass, place_residuals
from cwpo_jax.train import tasks
from tests.engine.test_packed_pairs import FIXTURES, random_pairs


def _cfg():
    return types.SimpleNamespace(
        align=types.SimpleNamespace(logprob_batch_size=8, packed_pairs=True, shared_prefix=True,
                                    train=types.SimpleNamespace(scan_layers=False, remat="none")),
        mesh=types.SimpleNamespace(data=-1, fsdp=1, tensor=1))


@pytest.mark.parametrize("family", ["llama"])
def test_training_from_cached_bottom_layers_equals_the_whole_stack(family):
    base = models.from_pretrained(os.path.join(FIXTURES, family))  # two layers
    pairs = random_pairs(5, base.config.vocab_size, seed=4)
    tok = types.SimpleNamespace(pad_token_id=0, eos_token_id=0)
    cached = frozen_layers.residuals(_cfg(), base, pairs, tok, stop_layer=1, name="test")
    model = models.apply_lora(base, models.LoRAConfig(layers=(-1,)), rngs=nnx.Rngs(2))
    # Move the adapters off zero so the gradients and log-probs depend on them.
    for _, lin in models.lora._targets(model, models.LoRALinear):
        lin.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(1), lin.lora_b[...].shape)
    swap = np.array([1, 0, 1, 0, 0], bool)
    batch = collate_packed_pairs(pairs, [0, 2, 4], batch_size=4, buckets=(32, 48),
                                 response_len=8, pad_id=0, swap=swap)  # row 3 is padding
    batch["residual"] = place_residuals(batch["pair_index"], pairs, cached, swap,
                                        length=batch["input_ids"].shape[1])
    assert not batch["residual"][3].any()
    whole, _ = tasks.packed_response_logprobs(model, batch)
    top, _ = tasks.packed_response_logprobs(model, batch, start_layer=1)
    np.testing.assert_allclose(np.asarray(top), np.asarray(whole), rtol=1e-5, atol=1e-4)

    batch["ref_logps"] = np.asarray(whole) - 1.0
    batch["valid"] = (batch["pair_index"] >= 0).astype(np.float32)
    task = functools.partial(tasks.preference_task, pair_loss=losses.pair_loss_fn("dpo", beta=0.5),
                             beta=0.5)

    def loss(lora, start):
        m = nnx.merge(graphdef, lora, rest)
        num, den, _ = task(m, batch, start_layer=start)
        return num / den

    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (want, want_g), (got, got_g) = (grad(lora, s) for s in (0, 1))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(got_g))


def test_reference_pass_from_cached_bottom_layers_equals_the_whole_pass():
    model = models.from_pretrained(os.path.join(FIXTURES, "llama"))
    pairs = random_pairs(11, model.config.vocab_size, seed=6)
    tok = types.SimpleNamespace(pad_token_id=0, eos_token_id=0)
    cfg = _cfg()
    cfg.align.chunk_size = 0
    cached = frozen_layers.residuals(cfg, model, pairs, tok, stop_layer=1, name="test")
    whole = pair_logprobs_pass(cfg, model, pairs, tok, name="test")
    top = pair_logprobs_pass(cfg, model, pairs, tok, name="test", start_layer=1, residuals=cached)
    for a, b in zip(top, whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_residual_input_is_refused_with_a_kv_cache_or_without_a_start_layer():
    model = models.from_pretrained(os.path.join(FIXTURES, "llama"))
    ids = np.ones((1, 4), np.int32)
    with pytest.raises(ValueError, match="exactly when start_layer > 0"):
        model.forward(ids, start_layer=1)
    with pytest.raises(ValueError, match="no KV cache"):
        model.forward(ids, stop_layer=1, cache=model.init_cache(1, 4), cache_index=0)
