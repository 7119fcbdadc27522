"""LoRA: identity at init, trainable-only filter, merge equals adapter output, export merges."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cwpo_jax.models import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    from_pretrained,
    has_lora,
    logical_axes,
    merge_lora,
    save_pretrained,
    trainable_filter,
)
from tests.models.conftest import fixture_dir, golden


def _inputs():
    g = golden("llama_golden")
    return jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])


def _lora_model(family="llama", **kw):
    model = from_pretrained(fixture_dir(family))
    apply_lora(model, LoRAConfig(**kw), rngs=nnx.Rngs(1))
    return model


def test_apply_lora_targets_and_identity_at_init():
    base = from_pretrained(fixture_dir("llama"))
    ids, mask = _inputs()
    ref = np.asarray(base(ids, mask))
    model = _lora_model()
    attn = model.layers[0].self_attn
    assert isinstance(attn.q_proj, LoRALinear) and isinstance(attn.v_proj, LoRALinear)
    assert not isinstance(attn.k_proj, LoRALinear)
    assert attn.q_proj.lora_a[...].shape == (32, 8) and attn.q_proj.lora_b[...].shape == (8, 4, 8)
    np.testing.assert_allclose(np.asarray(model(ids, mask)), ref, atol=1e-6)  # B = 0


def test_unknown_target_is_a_clear_error():
    model = from_pretrained(fixture_dir("opt"))
    with pytest.raises(ValueError, match="query_key_value"):
        apply_lora(model, LoRAConfig(targets=("query_key_value",)), rngs=nnx.Rngs(0))


def test_only_lora_params_train():
    model = _lora_model()
    assert trainable_filter(model) is nnx.LoRAParam
    frozen_before = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    frozen_before = jax.tree.map(np.asarray, frozen_before)
    lora_before = jax.tree.map(np.asarray, nnx.state(model, nnx.LoRAParam))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.LoRAParam)
    ids, mask = _inputs()

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            return jnp.mean(jax.nn.logsumexp(m(ids, mask), axis=-1))
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
        opt.update(model, grads)
        return loss

    model.train()  # LoRA dropout on; the step still has rngs through the Dropout module
    step(model, opt)
    step(model, opt)
    model.eval()
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    jax.tree.map(np.testing.assert_array_equal, frozen_before, after)
    lora_after = jax.tree.map(np.asarray, nnx.state(model, nnx.LoRAParam))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), lora_before, lora_after)
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("family", ["llama", "opt350", "bert"])
def test_merge_equals_adapter_forward(family, tmp_path):
    targets = ("q_proj", "v_proj", "down_proj", "fc1", "o_proj")
    model = from_pretrained(fixture_dir(family))
    apply_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.0, targets=targets),
               rngs=nnx.Rngs(2))
    # Give B non-zero values so the adapter contributes.
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        if path[-1] == "lora_b":
            key = jax.random.key(hash(path) % 2**31)
            var.set_value(0.05 * jax.random.normal(key, var.shape))
    ids, mask = _inputs()
    out = np.asarray(model(ids, mask))
    merged = merge_lora(model)
    assert not has_lora(merged) and has_lora(model)
    np.testing.assert_allclose(np.asarray(merged(ids, mask)), out, atol=1e-5)
    # save_pretrained merges on the way out; the export reloads to the same function.
    save_pretrained(model, tmp_path / "m")
    np.testing.assert_allclose(np.asarray(from_pretrained(str(tmp_path / "m"))(ids, mask)), out,
                               atol=1e-5)


def test_lora_params_have_logical_axes():
    axes = logical_axes(_lora_model())
    q = axes["layers"][0]["self_attn"]["q_proj"]
    assert q["kernel"] == ("embed", "q_heads", "head_dim")
    assert q["lora_a"] == ("embed", None)
    assert q["lora_b"] == (None, "q_heads", "head_dim")


def test_lora_layers_selects_layers_from_either_end():
    model = _lora_model(layers=(-1,))  # the fixture has two layers: -1 is layer 1
    assert not isinstance(model.layers[0].self_attn.q_proj, LoRALinear)
    assert isinstance(model.layers[1].self_attn.q_proj, LoRALinear)
    assert isinstance(model.layers[1].self_attn.v_proj, LoRALinear)
    assert isinstance(_lora_model(layers=(0,)).layers[0].self_attn.q_proj, LoRALinear)
    assert not isinstance(_lora_model(layers=(0,)).layers[1].self_attn.q_proj, LoRALinear)


def test_lora_layers_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match=r"LoRA layers \[2\] out of range for a model with 2"):
        _lora_model(layers=(2,))
