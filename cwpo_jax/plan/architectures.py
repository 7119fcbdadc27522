"""Model architectures by name, for planning without weights or a hub: HF config dicts of the
paper's models and common Llama-family sizes, and the resolution of a config's model spec
(hub id, local folder, `tiny:<family>`, `pkg:<name>`) to one of them or to a config.json."""
from __future__ import annotations

import json
import os

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _opt(hidden, layers, heads, ffn):
    return {"model_type": "opt", "vocab_size": 50272, "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "ffn_dim": ffn,
            "word_embed_proj_dim": hidden, "max_position_embeddings": 2048,
            "do_layer_norm_before": True, "activation_function": "relu",
            "enable_bias": True, "layer_norm_elementwise_affine": True,
            "tie_word_embeddings": True, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2}


def _qwen2(hidden, ffn, layers, heads, kv, vocab, tied):
    return {"model_type": "qwen2", "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "max_position_embeddings": 32768, "tie_word_embeddings": tied,
            "hidden_act": "silu", "use_sliding_window": False, "eos_token_id": 151643}


def _llama3(hidden, ffn, layers, heads, tied, factor):
    return {"model_type": "llama", "vocab_size": 128256, "hidden_size": hidden,
            "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": 8, "head_dim": hidden // heads, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "rope_scaling": dict(_LLAMA3_ROPE, factor=factor),
            "max_position_embeddings": 131072, "tie_word_embeddings": tied,
            "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001}


# name -> HF config (the published config.json's architecture fields).
ARCHITECTURES = {
    "opt-125m": _opt(768, 12, 12, 3072),
    "opt-350m": None,  # project_in/out and post-norm: load its config.json instead
    "opt-1.3b": _opt(2048, 24, 32, 8192),
    "opt-6.7b": _opt(4096, 32, 32, 16384),
    "opt-13b": _opt(5120, 40, 40, 20480),
    "qwen2.5-0.5b": _qwen2(896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": _qwen2(1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-7b": _qwen2(3584, 18944, 28, 28, 4, 152064, False),
    "qwen2.5-14b": _qwen2(5120, 13824, 48, 40, 8, 152064, False),
    "llama-3.2-1b": _llama3(2048, 8192, 16, 32, True, 32.0),
    "llama-3.1-8b": _llama3(4096, 14336, 32, 32, False, 8.0),
    "llama-3.1-70b": _llama3(8192, 28672, 80, 64, False, 8.0),
}
ARCHITECTURES = {k: v for k, v in ARCHITECTURES.items() if v is not None}

# The vocabulary of `tiny:<family>` models in plans (the tiny pipeline's comes from its tokenizer).
TINY_VOCAB = 512


def _known_name(spec: str) -> str | None:
    """'facebook/opt-1.3b', 'Qwen/Qwen2.5-7B-Instruct', 'meta-llama/Llama-3.1-8B' -> a key of
    ARCHITECTURES (instruct and base variants share an architecture)."""
    name = spec.rstrip("/").split("/")[-1].lower()
    for suffix in ("-instruct", "-chat", "-hf"):
        name = name.removesuffix(suffix)
    name = name.replace("meta-llama-", "llama-")
    return name if name in ARCHITECTURES else None


def hf_config(spec: str) -> tuple[str, dict]:
    """(label, HF config dict) of a model spec, without weights or network: a named architecture
    (ARCHITECTURES or a hub id ending in one), `tiny:<family>`, `pkg:<name>` / a local folder /
    a config.json (read from disk)."""
    from cwpo_jax.models import families

    if spec.startswith("tiny:"):
        family = spec.split(":", 1)[1]
        tiny = families.tiny_configs()
        if family not in tiny:
            raise ValueError(f"unknown tiny model family {family!r}; expected one of "
                             f"{sorted(tiny)}")
        return spec, dict(tiny[family], vocab_size=TINY_VOCAB)
    name = _known_name(spec)
    if name is not None:
        return name, dict(ARCHITECTURES[name])
    path = spec
    if spec.startswith("pkg:"):
        from cwpo_jax import assets

        path = assets.resolve(spec)
    if path.endswith(".gguf") and os.path.isfile(path):
        from cwpo_jax.models.gguf_io import GGUFFile, hf_config_from_gguf

        return spec, hf_config_from_gguf(GGUFFile(path))  # reads the metadata, no tensors
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return spec, json.load(f)
    raise ValueError(f"model {spec!r}: not a named architecture ({', '.join(ARCHITECTURES)}) "
                     "and no config.json at that path")
