"""Scan over layers: stacked layers give transformers' logits, the unrolled model's gradients,
the same samples, and round-trip back to per-layer modules and HF export."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cwpo_jax.models import (
    LlamaConfig,
    LlamaForCausalLM,
    LoRAConfig,
    StackedLayers,
    apply_lora,
    from_pretrained,
    generate,
    is_stacked,
    logical_axes,
    save_pretrained,
    stack_layers,
    unstack_layers,
)
from tests.models.conftest import fixture_dir, golden

ATOL = 2e-4  # the golden-logit tolerance of test_families


def _stacked(family, **overrides):
    return stack_layers(from_pretrained(fixture_dir(family), **overrides))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_stacked_logits_equal_transformers(family):
    g = golden(f"{family}_golden")
    model = _stacked(family)
    assert isinstance(model.layers, StackedLayers) and is_stacked(model)
    out = np.asarray(model(jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])))
    real = g["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[real], g["logits"][real], atol=ATOL, rtol=0)


def test_stacked_reward_model_matches_sequence_classification():
    from cwpo_jax.models import reward_model_from_pretrained

    g = golden("llama_rm_golden")
    rm = stack_layers(reward_model_from_pretrained(fixture_dir("llama_rm")))
    assert is_stacked(rm)
    scores = np.asarray(rm(jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])))
    np.testing.assert_allclose(scores, g["rewards"], atol=ATOL, rtol=0)


def _loss(model, ids, mask):
    logp = jax.nn.log_softmax(model(ids, mask), axis=-1)
    picked = jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    return -(picked * mask[:, 1:]).sum() / mask[:, 1:].sum()


def _grads(model, ids, mask):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return jax.jit(jax.grad(lambda p: _loss(nnx.merge(graphdef, p, rest), ids, mask)))(params)


@pytest.mark.parametrize("remat", [False, True])
def test_stacked_gradients_equal_unrolled(remat):
    g = golden("llama_golden")
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    unrolled = _grads(from_pretrained(fixture_dir("llama"), remat=remat), ids, mask)
    stacked = _grads(_stacked("llama", remat=remat), ids, mask)
    unrolled, stacked = nnx.to_pure_dict(unrolled), nnx.to_pure_dict(stacked)
    for i, layer_grads in unrolled["layers"].items():
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, atol=1e-6, rtol=1e-5),
                     stacked["layers"]["layer"], layer_grads)
    np.testing.assert_allclose(stacked["embed_tokens"]["embedding"],
                               unrolled["embed_tokens"]["embedding"], atol=1e-6, rtol=1e-5)


def test_stacked_params_carry_a_layers_axis():
    model = from_pretrained(fixture_dir("llama"))
    before = logical_axes(model)["layers"][0]["self_attn"]["q_proj"]["kernel"]
    stack_layers(model)
    after = logical_axes(model)["layers"]["layer"]["self_attn"]["q_proj"]["kernel"]
    assert after == ("layers", *before)
    kernel = model.layers.layer.self_attn.q_proj.kernel[...]
    assert kernel.shape[0] == model.config.num_hidden_layers


def test_unstack_restores_layers_and_export_round_trips(tmp_path):
    g = golden("llama_golden")
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    ref = np.asarray(from_pretrained(fixture_dir("llama"))(ids, mask))
    model = _stacked("llama")
    save_pretrained(model, tmp_path / "export")  # exports HF per-layer names from stacked
    assert is_stacked(model)  # export leaves the caller's model as it was
    np.testing.assert_allclose(np.asarray(from_pretrained(tmp_path / "export")(ids, mask)), ref,
                               atol=1e-5, rtol=0)
    unstack_layers(model)
    assert not is_stacked(model) and len(model.layers) == model.config.num_hidden_layers
    np.testing.assert_allclose(np.asarray(model(ids, mask)), ref, atol=1e-5, rtol=0)


def test_sampling_with_stacked_layers_equals_transformers_generate():
    g = golden("llama_generate")
    model = _stacked("llama")
    gen = generate(model, g["input_ids"], g["attention_mask"],
                   max_new_tokens=g["output"].shape[1], temperature=0.0)
    np.testing.assert_array_equal(np.asarray(gen.tokens), g["output"])


def test_lora_dropout_runs_per_layer_under_scan():
    g = golden("llama_golden")
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    model = from_pretrained(fixture_dir("llama"))
    apply_lora(model, LoRAConfig(dropout=0.5), rngs=nnx.Rngs(3))
    eval_out = np.asarray(model(ids, mask))
    stack_layers(model)
    np.testing.assert_allclose(np.asarray(model(ids, mask)), eval_out, atol=1e-5, rtol=0)
    # Make the adapters matter, then check dropout is live and its counters advance per call.
    lora_b = model.layers.layer.self_attn.q_proj.lora_b
    lora_b.set_value(jnp.ones_like(lora_b.get_value()))
    counts = model.layers.layer.self_attn.q_proj.lora_dropout.rngs.count
    model.train()
    first = np.asarray(model(ids, mask))
    after_first = np.asarray(counts.get_value()).copy()
    second = np.asarray(model(ids, mask))
    assert after_first.shape == (model.config.num_hidden_layers,)
    assert (np.asarray(counts.get_value()) > after_first).all()
    assert not np.allclose(first, second)


def test_layers_of_different_structure_are_refused():
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                      sliding_windows=(4, None))
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="layer 1 differs in structure"):
        stack_layers(model)


def test_models_without_a_llama_decoder_are_refused():
    with pytest.raises(ValueError, match="no Llama-family decoder"):
        stack_layers(from_pretrained(fixture_dir("opt")))


def test_lora_on_stacked_layers_is_refused():
    with pytest.raises(ValueError, match="add adapters before stack_layers"):
        apply_lora(_stacked("llama"), LoRAConfig(), rngs=nnx.Rngs(0))


def test_weight_decay_treats_stacked_vectors_as_vectors():
    from cwpo_jax.train import optim

    model = _stacked("llama")
    _, params, _ = nnx.split(model, nnx.Param, ...)
    tx, _ = optim.make_optimizer(learning_rate=0.1, total_steps=2, weight_decay=0.5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    layer = nnx.to_pure_dict(updates)["layers"]["layer"]
    assert np.all(layer["input_layernorm"]["scale"] == 0)  # [L, D]: a vector per layer
    assert np.any(layer["self_attn"]["q_proj"]["kernel"] != 0)  # [L, D, H, hd]: decayed


def test_resuming_with_the_other_layer_layout_names_the_setting(tmp_path):
    from cwpo_jax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(1, nnx.split(from_pretrained(fixture_dir("llama")), nnx.Param, ...)[1])
    ckpt.close()
    stacked = nnx.split(_stacked("llama"), nnx.Param, ...)[1]
    with pytest.raises(ValueError, match=r"layer layout \(train.scan_layers\)"):
        Checkpointer(str(tmp_path / "ckpt")).restore(stacked)
