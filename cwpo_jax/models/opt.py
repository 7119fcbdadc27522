"""OPT decoder (the paper's weak annotator backbone and strong students) in Flax NNX.

Learned positions with HF's offset of 2, pre-LN (post-LN when do_layer_norm_before=False, as
OPT-350m), ReLU MLP, biases everywhere, and OPT-350m's project_in/project_out when
word_embed_proj_dim != hidden_size.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from cwpo_jax import sharding
from cwpo_jax.models import layers
from cwpo_jax.models.base import CausalLM, default_mask
from cwpo_jax.models.spec import Family

POSITION_OFFSET = 2  # HF OPTLearnedPositionalEmbedding reserves the first two rows


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    vocab_size: int
    hidden_size: int
    ffn_dim: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int | None = None
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False
    activation_function: str = "relu"
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: Any = 2
    eos_token_id: Any = 2
    pad_token_id: Any = 1
    dtype: str = "float32"
    param_dtype: str = "float32"
    model_type: str = "opt"
    remat: bool | str = False  # layers.remat_policy: "none", "full", "dots" (training memory)

    def __post_init__(self):
        if isinstance(self.eos_token_id, list):  # hashable: configs are static metadata
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self):
        return self.num_attention_heads

    @property
    def proj_dim(self):
        return self.word_embed_proj_dim or self.hidden_size

    @property
    def has_final_norm(self):
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> OPTConfig:
        if hf.get("model_type", "opt") != "opt":
            raise ValueError(f"model_type={hf.get('model_type')!r} is not 'opt'")
        if not hf.get("enable_bias", True) or not hf.get("layer_norm_elementwise_affine", True):
            raise ValueError("OPT configs with enable_bias=False or "
                             "layer_norm_elementwise_affine=False are not supported")
        kw = {
            "vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"], "ffn_dim": hf["ffn_dim"],
            "num_hidden_layers": hf["num_hidden_layers"],
            "num_attention_heads": hf["num_attention_heads"],
            "max_position_embeddings": hf.get("max_position_embeddings", 2048),
            "word_embed_proj_dim": hf.get("word_embed_proj_dim"),
            "do_layer_norm_before": hf.get("do_layer_norm_before", True),
            "remove_final_layer_norm": hf.get("_remove_final_layer_norm", False),
            "activation_function": hf.get("activation_function", "relu"),
            "tie_word_embeddings": hf.get("tie_word_embeddings", True),
            "bos_token_id": hf.get("bos_token_id", 2), "eos_token_id": hf.get("eos_token_id", 2),
            "pad_token_id": hf.get("pad_token_id", 1)}
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict:
        return {
            "architectures": ["OPTForCausalLM"], "model_type": "opt",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "ffn_dim": self.ffn_dim, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "word_embed_proj_dim": self.proj_dim,
            "do_layer_norm_before": self.do_layer_norm_before,
            "_remove_final_layer_norm": self.remove_final_layer_norm,
            "activation_function": self.activation_function, "enable_bias": True,
            "layer_norm_elementwise_affine": True,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id, "dtype": self.param_dtype,
        }


class OPTLayer(nnx.Module):
    def __init__(self, cfg: OPTConfig, *, dtype, param_dtype, rngs):
        d = cfg.hidden_size
        kw = {"dtype": dtype, "param_dtype": param_dtype}
        self.pre_ln = cfg.do_layer_norm_before
        self.self_attn = layers.Attention(d, cfg.num_attention_heads, cfg.num_attention_heads,
                                          cfg.head_dim, qkv_bias=True, o_bias=True, causal=True,
                                          rngs=rngs, **kw)
        self.self_attn_layer_norm = layers.LayerNorm(d, eps=1e-5, **kw)
        self.fc1 = layers.Linear(d, cfg.ffn_dim, in_axes=("embed",), out_axes=("mlp",),
                                 use_bias=True, rngs=rngs, **kw)
        self.fc2 = layers.Linear(cfg.ffn_dim, d, in_axes=("mlp",), out_axes=("embed",),
                                 use_bias=True, rngs=rngs, **kw)
        self.final_layer_norm = layers.LayerNorm(d, eps=1e-5, **kw)
        self.act = layers.activation(cfg.activation_function)

    def __call__(self, x, *, positions, kv_valid, cache, cache_index):
        h = self.self_attn_layer_norm(x) if self.pre_ln else x
        h, new_cache = self.self_attn(h, positions=positions, kv_valid=kv_valid, cache=cache,
                                      cache_index=cache_index)
        x = x + h
        if not self.pre_ln:
            x = self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if self.pre_ln else x
        x = x + self.fc2(self.act(self.fc1(h)))
        if not self.pre_ln:
            x = self.final_layer_norm(x)
        return x, new_cache


class OPTForCausalLM(CausalLM):
    """OPT causal LM; the LM head is tied to the token embedding (as in every OPT release)."""

    def __init__(self, config: OPTConfig, *, rngs: nnx.Rngs):
        if not config.tie_word_embeddings:
            raise ValueError("OPT with tie_word_embeddings=False is not supported")
        self.config = config
        dtype, param_dtype = layers.as_dtype(config.dtype), layers.as_dtype(config.param_dtype)
        self.dtype = dtype
        kw = {"dtype": dtype, "param_dtype": param_dtype}
        d, p = config.hidden_size, config.proj_dim
        self.embed_tokens = layers.Embed(config.vocab_size, p, rngs=rngs, **kw)
        self.embed_positions = layers.Embed(config.max_position_embeddings + POSITION_OFFSET, d,
                                            axes=(None, "embed"), rngs=rngs, **kw)
        # Each attribute is assigned once: NNX fixes an attribute's data/static status then.
        self.project_in = (layers.Linear(p, d, in_axes=(None,), out_axes=("embed",),
                                         rngs=rngs, **kw) if p != d else None)
        self.project_out = (layers.Linear(d, p, in_axes=("embed",), out_axes=(None,),
                                          rngs=rngs, **kw) if p != d else None)
        self.layers = nnx.List([OPTLayer(config, rngs=rngs, **kw)
                                for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = (layers.LayerNorm(d, eps=1e-5, **kw)
                                 if config.has_final_norm else None)

    def lm_head_matrix(self):
        """[proj_dim, V] = embedding.T (OPT ties the head)."""
        return self.embed_tokens.embedding[...].T

    def forward(self, input_ids, attention_mask=None, *, positions=None, cache=None,
                cache_index=None, kv_valid=None):
        """Same contract as LlamaForCausalLM.forward; hidden is [B,T,proj_dim]."""
        mask = default_mask(input_ids, attention_mask)
        if positions is None:
            positions = layers.positions_from_mask(mask)
        if kv_valid is None:
            kv_valid = mask
        x = self.embed_tokens(input_ids)
        if self.project_in is not None:
            x = self.project_in(x)
        x = x + self.embed_positions(positions + POSITION_OFFSET)
        new_cache = None
        if cache is None:
            def run(layer, x, positions, kv_valid):
                return layer(x, positions=positions, kv_valid=kv_valid, cache=None,
                             cache_index=None)[0]

            run = layers.maybe_remat(run, self.config.remat)
            for layer in self.layers:
                x = run(layer, sharding.constrain_batch(x), positions, kv_valid)
        else:
            new_cache = []
            for i, layer in enumerate(self.layers):
                x, c = layer(x, positions=positions, kv_valid=kv_valid, cache=cache[i],
                             cache_index=cache_index)
                new_cache.append(c)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return x, new_cache


def hf_path(name: str) -> str:
    """Our module path -> HF's: under "model.decoder.", and o_proj is OPT's out_proj."""
    return "model.decoder." + name.replace("self_attn.o_proj", "self_attn.out_proj")


FAMILY = Family(name="opt", config_cls=OPTConfig, model_cls=OPTForCausalLM,
                hf_classes={"opt": "OPT"}, hf_path=hf_path)
