"""Llama-family decoder (Llama 2/3, Mistral, Qwen2/2.5, SmolLM2) in Flax NNX.

One module covers the family: the differences are config fields (q/k/v bias for Qwen2, sliding
window for Mistral, RoPE base and scaling, tied embeddings, GQA).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from cwpo_jax import sharding
from cwpo_jax.models import layers
from cwpo_jax.models.base import CausalLM, default_mask
from cwpo_jax.models.scan import StackedLayers
from cwpo_jax.models.spec import Family, GGUFLayout

# HF model_type -> transformers class stem (LlamaForCausalLM, ...).
HF_CLASSES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
LLAMA_MODEL_TYPES = tuple(HF_CLASSES)


def read_rope(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from a transformers 4.x or 5.x config dict.

    5.x nests both under `rope_parameters`; 4.x has top-level `rope_theta` and `rope_scaling`.
    """
    params = hf.get("rope_parameters")
    if params:
        if "rope_theta" not in params:
            raise ValueError(f"config rope_parameters has no rope_theta: {params}")
        theta = float(params["rope_theta"])
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        if "rope_theta" not in hf:
            raise ValueError("config has neither rope_parameters nor rope_theta; refusing to "
                             "guess the RoPE base")
        theta = float(hf["rope_theta"])
        scaling = dict(hf["rope_scaling"]) if hf.get("rope_scaling") else None
    if scaling is not None:
        if "rope_type" not in scaling and "type" in scaling:
            scaling["rope_type"] = scaling.pop("type")
        if scaling.get("rope_type", "default") == "default":
            scaling = None
    return theta, scaling


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None  # sorted (key, value) pairs; a dict is accepted
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v (and o for Llama) bias
    o_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    sliding_windows: tuple | None = None  # per layer window or None
    max_position_embeddings: int = 2048
    model_type: str = "llama"
    bos_token_id: Any = None
    eos_token_id: Any = None
    pad_token_id: Any = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool | str = False  # layers.remat_policy: "none", "full", "dots" (training memory)

    def __post_init__(self):
        # Configs are static pytree metadata in NNX graphdefs, so they must be hashable.
        rs = self.rope_scaling
        if isinstance(rs, dict):
            rs = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in rs.items()))
            object.__setattr__(self, "rope_scaling", rs)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        # Fail at load time, not at the first forward, on an unsupported RoPE.
        layers.rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling_dict)

    @property
    def rope_scaling_dict(self) -> dict | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> LlamaConfig:
        mt = hf.get("model_type", "llama")
        if mt not in LLAMA_MODEL_TYPES:
            raise ValueError(f"model_type={mt!r} is not a Llama-family model {LLAMA_MODEL_TYPES}")
        theta, scaling = read_rope(hf)
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        n_layers = hf["num_hidden_layers"]
        windows = None
        if mt == "mistral" and hf.get("sliding_window"):
            windows = (int(hf["sliding_window"]),) * n_layers
        elif mt == "qwen2" and hf.get("use_sliding_window") and hf.get("sliding_window"):
            types = hf.get("layer_types") or [
                "sliding_attention" if i >= hf.get("max_window_layers", n_layers)
                else "full_attention" for i in range(n_layers)]
            windows = tuple(int(hf["sliding_window"]) if t == "sliding_attention" else None
                            for t in types)
        if mt == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(hf.get("attention_bias", False))
        kw = {
            "vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
            "intermediate_size": hf["intermediate_size"], "num_hidden_layers": n_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": hf.get("num_key_value_heads") or heads, "head_dim": head_dim,
            "rms_norm_eps": hf.get("rms_norm_eps", 1e-6), "rope_theta": theta, "rope_scaling": scaling,
            "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "attention_bias": qkv_bias, "o_bias": o_bias, "mlp_bias": bool(hf.get("mlp_bias", False)),
            "hidden_act": hf.get("hidden_act", "silu"), "sliding_windows": windows,
            "max_position_embeddings": hf.get("max_position_embeddings", 2048), "model_type": mt,
            "bos_token_id": hf.get("bos_token_id"), "eos_token_id": hf.get("eos_token_id"),
            "pad_token_id": hf.get("pad_token_id")}
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict:
        """transformers 5.x-style config dict (also carries 4.x keys so either version reads it)."""
        arch = HF_CLASSES[self.model_type] + "ForCausalLM"
        scaling = self.rope_scaling_dict
        if scaling and scaling.get("rope_type") == "freq_factors":
            raise ValueError("rope_scaling freq_factors (from a GGUF rope_freqs tensor) has no "
                             "transformers config equivalent; cannot export this model")
        rope_params = {"rope_type": "default", **(scaling or {}), "rope_theta": self.rope_theta}
        d = {
            "architectures": [arch], "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps, "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_parameters": rope_params, "rope_theta": self.rope_theta,
            "rope_scaling": scaling,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id, "dtype": self.param_dtype,
        }
        if self.model_type == "llama":
            d["attention_bias"] = self.attention_bias
            d["mlp_bias"] = self.mlp_bias
        if self.sliding_windows and any(self.sliding_windows):
            window = next(w for w in self.sliding_windows if w)
            d["sliding_window"] = window
            if self.model_type == "qwen2":
                d["use_sliding_window"] = True
                d["layer_types"] = ["sliding_attention" if w else "full_attention"
                                    for w in self.sliding_windows]
        return d


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs):
        kw = {"use_bias": cfg.mlp_bias, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = layers.Linear(d, f, in_axes=("embed",), out_axes=("mlp",), **kw)
        self.up_proj = layers.Linear(d, f, in_axes=("embed",), out_axes=("mlp",), **kw)
        self.down_proj = layers.Linear(f, d, in_axes=("mlp",), out_axes=("embed",), **kw)
        self.act = layers.activation(cfg.hidden_act)

    def __call__(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, sliding_window, dtype, param_dtype, rngs):
        self.input_layernorm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps,
                                              dtype=dtype, param_dtype=param_dtype)
        self.self_attn = layers.Attention(
            cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            qkv_bias=cfg.attention_bias, o_bias=cfg.o_bias, causal=True,
            sliding_window=sliding_window, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps,
                                                       dtype=dtype, param_dtype=param_dtype)
        self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, *, positions, kv_valid, inv_freq, cache, cache_index):
        h, new_cache = self.self_attn(self.input_layernorm(x), positions=positions,
                                      kv_valid=kv_valid, inv_freq=inv_freq, cache=cache,
                                      cache_index=cache_index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_cache


class LlamaForCausalLM(CausalLM):
    """Llama-family causal LM. Parameter paths mirror HF names (model.layers[i].self_attn...)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype, param_dtype = layers.as_dtype(config.dtype), layers.as_dtype(config.param_dtype)
        self.dtype = dtype
        self.embed_tokens = layers.Embed(config.vocab_size, config.hidden_size, dtype=dtype,
                                         param_dtype=param_dtype, rngs=rngs)
        windows = config.sliding_windows or (None,) * config.num_hidden_layers
        self.layers = nnx.List([
            DecoderLayer(config, sliding_window=windows[i], dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
            for i in range(config.num_hidden_layers)])
        self.norm = layers.RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype,
                                   param_dtype=param_dtype)
        self.lm_head = None if config.tie_word_embeddings else layers.Linear(
            config.hidden_size, config.vocab_size, in_axes=("embed",), out_axes=("vocab",),
            dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def lm_head_matrix(self):
        """[D, V]: embedding.T when tied."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...].T
        return self.lm_head.kernel[...]

    def forward(self, input_ids, attention_mask=None, *, positions=None, cache=None,
                cache_index=None, kv_valid=None, start_layer: int = 0,
                stop_layer: int | None = None, residual=None):
        """-> (final normed hidden [B,T,D], new cache or None).

        Without a cache: kv_valid = attention_mask and positions from the mask.
        With a cache (sampling): the caller passes positions [B,T], kv_valid [B,S] and the slot
        `cache_index` where these T tokens are written.
        Part of the stack (no cache, layers not stacked): `residual` [B,T,D] is the residual
        stream entering layer `start_layer` (in place of the embeddings); with `stop_layer`
        the stream leaving layer stop_layer - 1 is returned, un-normed. Frozen bottom layers
        then run once (align.cache_frozen_layers) instead of at every training step.
        """
        mask = default_mask(input_ids, attention_mask)
        if positions is None:
            positions = layers.positions_from_mask(mask)
        if kv_valid is None:
            kv_valid = mask
        # A trace-time constant, not a Variable: it is derived from the config, never trained.
        inv_freq = layers.rope_inv_freq(self.config.head_dim, self.config.rope_theta,
                                        self.config.rope_scaling_dict)
        stacked = isinstance(self.layers, StackedLayers)
        partial = start_layer or stop_layer is not None or residual is not None
        if partial:
            if cache is not None or stacked:
                raise ValueError("start_layer / stop_layer / residual need unstacked layers "
                                 "and no KV cache")
            if (residual is None) != (start_layer == 0):
                raise ValueError("pass `residual` exactly when start_layer > 0")
        x = self.embed_tokens(input_ids) if residual is None else residual
        if cache is None and stacked:
            x = self.layers(x, remat=self.config.remat, positions=positions, kv_valid=kv_valid,
                            inv_freq=inv_freq)
            return self.norm(x), None
        if cache is None:
            def run(layer, x, positions, kv_valid):
                return layer(x, positions=positions, kv_valid=kv_valid, inv_freq=inv_freq,
                             cache=None, cache_index=None)[0]

            run = layers.maybe_remat(run, self.config.remat)
            for layer in list(self.layers)[start_layer:stop_layer]:
                x = run(layer, sharding.constrain_batch(x), positions, kv_valid)
            return (self.norm(x) if stop_layer is None else x), None
        new_cache = []
        # Sampling with stacked layers slices each layer out: decode steps are short and the
        # cache stays a per-layer list either way.
        per_layer = self.layers.unstacked() if stacked else self.layers
        for i, layer in enumerate(per_layer):
            x, c = layer(x, positions=positions, kv_valid=kv_valid, inv_freq=inv_freq,
                         cache=cache[i], cache_index=cache_index)
            new_cache.append(c)
        return self.norm(x), new_cache


def hf_path(name: str) -> str:
    """Our module path -> HF's: parameter paths already mirror HF names under "model."."""
    return name if name.startswith("lm_head") else "model." + name


GGUF = GGUFLayout(
    architectures=("llama", "qwen2"),
    global_tensors={
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    },
    layer_tensors={
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    },
    rope_permuted=("llama",),
)

FAMILY = Family(
    name="llama", config_cls=LlamaConfig, model_cls=LlamaForCausalLM, hf_classes=HF_CLASSES,
    hf_path=hf_path,
    # The LM head is unused under a reward head; tying drops it (and its memory).
    reward_overrides={"tie_word_embeddings": True},
    tiny_config=dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64,
                     intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0,
                     rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu"),
    gguf=GGUF, stackable=True)
