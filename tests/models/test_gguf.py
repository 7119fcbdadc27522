"""GGUF loading on tiny files written here the way llama.cpp's converter writes them: Llama Q/K
rows permuted for interleaved RoPE (and Llama-3 scaling as a rope_freqs tensor), Qwen2 with
q/k/v biases and no permute. The real SmolLM2 GGUF is covered in test_real_models.py."""
import json
import os

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from cwpo_jax.models import from_pretrained
from cwpo_jax.models.gguf_io import undo_rope_permute
from cwpo_jax.models.layers import rope_inv_freq
from tests.models.conftest import fixture_dir, golden

LAYER = {"input_layernorm.weight": "attn_norm.weight",
         "post_attention_layernorm.weight": "ffn_norm.weight",
         "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
         "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
         "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
         "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
         "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def llama_cpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf's permute (HF rotate-half rows -> interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def write_gguf(family, path):
    src = fixture_dir(family)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    arch = "llama" if family == "llama" else "qwen2"
    w = gguf.GGUFWriter(str(path), arch)
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_uint32(f"{arch}.block_count", cfg["num_hidden_layers"])
    w.add_uint32(f"{arch}.context_length", cfg["max_position_embeddings"])
    w.add_uint32(f"{arch}.embedding_length", cfg["hidden_size"])
    w.add_uint32(f"{arch}.feed_forward_length", cfg["intermediate_size"])
    w.add_uint32(f"{arch}.attention.head_count", heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", kv)
    w.add_uint32(f"{arch}.rope.dimension_count", head_dim)
    w.add_float32(f"{arch}.rope.freq_base", cfg["rope_parameters"]["rope_theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    w.add_uint32(f"{arch}.vocab_size", cfg["vocab_size"])
    w.add_uint32("tokenizer.ggml.eos_token_id", cfg["eos_token_id"])
    w.add_uint32("tokenizer.ggml.padding_token_id", cfg["pad_token_id"])
    for name, value in sorted(tensors.items()):
        value = value.astype(np.float32)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            i, rest = name[len("model.layers."):].split(".", 1)
            gname = f"blk.{i}.{LAYER[rest]}"
            if arch == "llama" and rest.startswith("self_attn.q_proj"):
                value = llama_cpp_permute(value, heads)
            elif arch == "llama" and rest.startswith("self_attn.k_proj"):
                value = llama_cpp_permute(value, kv)
        w.add_tensor(gname, np.ascontiguousarray(value))
    scaling = dict(cfg["rope_parameters"])
    theta = scaling.pop("rope_theta")
    if scaling.get("rope_type") == "llama3":  # llama.cpp stores the scaling as divisors
        base = rope_inv_freq(head_dim, theta, None)
        w.add_tensor("rope_freqs.weight",
                     (base / rope_inv_freq(head_dim, theta, scaling)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_permute_roundtrip():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(32, 3)
    np.testing.assert_array_equal(undo_rope_permute(llama_cpp_permute(w, 4), 4), w)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tiny_gguf_matches_transformers(family, tmp_path):
    path = tmp_path / f"{family}.gguf"
    write_gguf(family, path)
    model = from_pretrained(str(path))
    if family == "llama":
        assert model.config.rope_scaling_dict["rope_type"] == "freq_factors"
    else:
        assert model.config.attention_bias and model.config.tie_word_embeddings
    g = golden(f"{family}_golden")
    out = np.asarray(model(jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])))
    real = g["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[real], g["logits"][real], atol=1e-4)
