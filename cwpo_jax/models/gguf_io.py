"""GGUF files (llama.cpp) -> Llama-family NNX models; read and dequantised with `gguf`, no torch.

llama.cpp stores Llama Q/K projections with rows permuted for its interleaved RoPE; we undo that
so the weights match HF's rotate-half layout (and our `apply_rope`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from cwpo_jax.models import families
from cwpo_jax.models.checkpoint_hf import build_config, hf_name, load_params

# general.architecture values we read (each family declares its own GGUFLayout).
SUPPORTED_ARCHS = tuple(families.gguf_layouts())


def undo_rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert permute on Q/K weight rows (or bias)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFError(ValueError):
    """A .gguf file that cannot be read (not GGUF, truncated) or that we do not support."""


class GGUFFile:
    def __init__(self, path: str):
        import gguf

        self._gguf = gguf
        self.path = path
        try:
            self.reader = gguf.GGUFReader(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"GGUF file not found: {path}") from None
        except (ValueError, IndexError) as e:  # bad magic, truncated: numpy cannot view it
            raise GGUFError(f"{path}: not a readable GGUF file ({e})") from None
        self.tensors = {t.name: t for t in self.reader.tensors}

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    def require(self, key: str):
        value = self.field(key)
        if value is None:
            raise GGUFError(f"{self.path}: GGUF metadata lacks {key!r}")
        return value

    def tensor(self, name: str) -> np.ndarray | None:
        t = self.tensors.get(name)
        if t is None:
            return None
        return np.asarray(self._gguf.quants.dequantize(t.data, t.tensor_type), np.float32)


def hf_config_from_gguf(g: GGUFFile) -> dict:
    """An HF-style config dict from GGUF metadata (so the HF config parser does the rest)."""
    arch = g.require("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"{g.path}: GGUF general.architecture={arch!r} is not supported; "
                        f"supported: {SUPPORTED_ARCHS}")
    p = arch + "."
    heads = int(g.require(p + "attention.head_count"))
    hidden = int(g.require(p + "embedding_length"))
    tokens = g.field("tokenizer.ggml.tokens")
    vocab = g.field(p + "vocab_size") or (len(tokens) if tokens is not None else None)
    if vocab is None:
        vocab = g.tensors["token_embd.weight"].shape[-1]
    head_dim = g.field(p + "attention.key_length") or g.field(p + "rope.dimension_count") \
        or hidden // heads
    scaling = None
    if "rope_freqs.weight" in g.tensors:  # Llama 3.1-style scaling stored as per-dim factors
        scaling = {"rope_type": "freq_factors",
                   "factors": tuple(float(x) for x in g.tensor("rope_freqs.weight"))}
    elif g.field(p + "rope.scaling.type") == "linear":
        scaling = {"rope_type": "linear", "factor": float(g.require(p + "rope.scaling.factor"))}
    elif g.field(p + "rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{g.path}: rope.scaling.type={g.field(p + 'rope.scaling.type')!r} "
                         "is not supported")
    return {
        "model_type": arch, "vocab_size": int(vocab), "hidden_size": hidden,
        "intermediate_size": int(g.require(p + "feed_forward_length")),
        "num_hidden_layers": int(g.require(p + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g.field(p + "attention.head_count_kv") or heads),
        "head_dim": int(head_dim),
        "rms_norm_eps": float(g.require(p + "attention.layer_norm_rms_epsilon")),
        "rope_theta": float(g.field(p + "rope.freq_base") or 10000.0),
        "rope_scaling": scaling,
        "max_position_embeddings": int(g.field(p + "context_length") or 2048),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "bos_token_id": g.field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g.field("tokenizer.ggml.eos_token_id"),
        "pad_token_id": g.field("tokenizer.ggml.padding_token_id"),
    }


def load_gguf_model(path: str, *, dtype: DTypeLike = "float32",
                    param_dtype: DTypeLike | None = None, **overrides: Any) -> nnx.Module:
    """A .gguf file -> LlamaForCausalLM with dequantised (fp32, then cast) weights."""
    g = GGUFFile(path)
    hf = hf_config_from_gguf(g)
    cfg, model_cls = build_config(hf, dtype=dtype, param_dtype=param_dtype, **overrides)
    layout = families.gguf_layouts()[hf["model_type"]]
    permute = hf["model_type"] in layout.rope_permuted

    def get(name: str):
        gname = layout.tensor_name(name)
        if gname is None:
            return None
        w = g.tensor(gname)
        if w is None:
            return None
        if permute and gname.endswith(("attn_q.weight", "attn_q.bias")):
            w = undo_rope_permute(w, cfg.num_attention_heads)
        elif permute and gname.endswith(("attn_k.weight", "attn_k.bias")):
            w = undo_rope_permute(w, cfg.num_key_value_heads)
        return w

    abstract = nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0)))
    return load_params(abstract, get, lambda p: hf_name(cfg.model_type, p))
