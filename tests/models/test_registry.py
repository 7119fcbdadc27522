"""The family registry (models.families) that the loaders, the exporter and stacking read."""
import pytest

from cwpo_jax.models import families
from cwpo_jax.models.checkpoint_hf import build_config, hf_name, hf_reward_name
from cwpo_jax.models.llama import LlamaForCausalLM


def test_each_model_type_has_one_family():
    seen = [mt for f in families.FAMILIES for mt in f.model_types]
    assert len(seen) == len(set(seen)) and sorted(seen) == families.model_types()
    with pytest.raises(ValueError, match=r"unknown model_type 'mamba'; supported: \["):
        families.for_model_type("mamba")


@pytest.mark.parametrize("name", sorted(families.tiny_configs()))
def test_tiny_configs_build_their_family(name):
    hf = dict(families.tiny_configs()[name], vocab_size=32)
    cfg, model_cls = build_config(hf)
    assert model_cls is families.for_model_type(hf["model_type"]).model_cls
    assert cfg.vocab_size == 32


def test_names_come_from_the_family():
    assert hf_name("qwen2", ("layers", 0, "mlp", "up_proj", "kernel")) == \
        "model.layers.0.mlp.up_proj.weight"
    assert hf_name("opt", ("layers", 1, "self_attn", "o_proj", "bias")) == \
        "model.decoder.layers.1.self_attn.out_proj.bias"
    assert hf_name("bert", ("layers", 0, "attention", "q_proj", "kernel")) == \
        "encoder.layer.0.attention.self.query.weight"
    assert hf_reward_name("bert", ("score", "kernel")) == "classifier.weight"
    assert hf_reward_name("bert", ("backbone", "pooler", "bias")) == "bert.pooler.dense.bias"
    assert hf_reward_name("llama", ("score", "kernel")) == "score.weight"


def test_gguf_layout_and_stacking():
    layout = families.gguf_layouts()["llama"]
    assert layout.tensor_name("model.layers.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight"
    assert layout.tensor_name("model.norm.weight") == "output_norm.weight"
    assert layout.tensor_name("model.layers.3.unknown.weight") is None
    assert families.stackable_models() == (LlamaForCausalLM,)
