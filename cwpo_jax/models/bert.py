"""BERT-style encoder (all-MiniLM-L6-v2 and friends) in Flax NNX, with mean / CLS pooling.

Post-LN, absolute learned positions (0..T-1, encoders are right-padded), exact-erf GELU,
bidirectional attention restricted to non-pad keys.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from cwpo_jax import sharding
from cwpo_jax.models import layers
from cwpo_jax.models.base import default_mask
from cwpo_jax.models.spec import Family

POOLINGS = ("mean", "cls", "pooler")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: Any = 0
    pooling: str = "mean"  # mean | cls (hidden[:, 0]) | pooler (tanh(dense(hidden[:, 0])))
    has_pooler: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    model_type: str = "bert"
    remat: bool | str = False  # layers.remat_policy: "none", "full", "dots" (training memory)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> BertConfig:
        if hf.get("model_type", "bert") != "bert":
            raise ValueError(f"model_type={hf.get('model_type')!r} is not 'bert'")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type={hf['position_embedding_type']!r} is not "
                             "supported (only 'absolute')")
        kw = {
            "vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
            "intermediate_size": hf["intermediate_size"],
            "num_hidden_layers": hf["num_hidden_layers"],
            "num_attention_heads": hf["num_attention_heads"],
            "max_position_embeddings": hf.get("max_position_embeddings", 512),
            "type_vocab_size": hf.get("type_vocab_size", 2),
            "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
            "hidden_act": hf.get("hidden_act", "gelu"), "pad_token_id": hf.get("pad_token_id", 0)}
        kw.update(overrides)
        if kw.get("pooling", "mean") not in POOLINGS:
            raise ValueError(f"pooling={kw['pooling']!r} must be one of {POOLINGS}")
        return cls(**kw)

    def to_hf(self) -> dict:
        return {
            "architectures": ["BertModel"], "model_type": "bert",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size, "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act, "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute", "dtype": self.param_dtype,
            "tie_word_embeddings": True,
        }


class BertLayer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, dtype, param_dtype, rngs):
        d = cfg.hidden_size
        kw = {"dtype": dtype, "param_dtype": param_dtype}
        self.attention = layers.Attention(d, cfg.num_attention_heads, cfg.num_attention_heads,
                                          cfg.head_dim, qkv_bias=True, o_bias=True,
                                          causal=False, rngs=rngs, **kw)
        self.attention_norm = layers.LayerNorm(d, eps=cfg.layer_norm_eps, **kw)
        self.intermediate = layers.Linear(d, cfg.intermediate_size, in_axes=("embed",),
                                          out_axes=("mlp",), use_bias=True, rngs=rngs, **kw)
        self.output = layers.Linear(cfg.intermediate_size, d, in_axes=("mlp",),
                                    out_axes=("embed",), use_bias=True, rngs=rngs, **kw)
        self.output_norm = layers.LayerNorm(d, eps=cfg.layer_norm_eps, **kw)
        self.act = layers.activation(cfg.hidden_act)

    def __call__(self, x, mask):
        h, _ = self.attention(x, positions=None, kv_valid=mask)
        x = self.attention_norm(x + h)
        return self.output_norm(x + self.output(self.act(self.intermediate(x))))


class BertModel(nnx.Module):
    """`model(ids, mask) -> last hidden [B,T,D]`; `model.pooled(ids, mask) -> [B,D]`."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype, param_dtype = layers.as_dtype(config.dtype), layers.as_dtype(config.param_dtype)
        self.dtype = dtype
        kw = {"dtype": dtype, "param_dtype": param_dtype}
        d = config.hidden_size
        self.word_embeddings = layers.Embed(config.vocab_size, d, rngs=rngs, **kw)
        self.position_embeddings = layers.Embed(config.max_position_embeddings, d,
                                                axes=(None, "embed"), rngs=rngs, **kw)
        self.token_type_embeddings = layers.Embed(config.type_vocab_size, d,
                                                  axes=(None, "embed"), rngs=rngs, **kw)
        self.embeddings_norm = layers.LayerNorm(d, eps=config.layer_norm_eps, **kw)
        self.layers = nnx.List([BertLayer(config, rngs=rngs, **kw)
                                for _ in range(config.num_hidden_layers)])
        self.pooler = (layers.Linear(d, d, in_axes=("embed",), out_axes=(None,), use_bias=True,
                                     rngs=rngs, **kw) if config.has_pooler else None)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, positions=None,
                 kv_valid=None):
        """Last hidden [B,T,D]. positions [B,T] default 0..T-1; kv_valid [B,T] or a per-query
        [B,T,T] mask (packed rows: each sequence sees only itself) default attention_mask."""
        mask = default_mask(input_ids, attention_mask)
        t = input_ids.shape[1]
        if t > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {t} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if positions is None:
            positions = jnp.arange(t)[None]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        x = self.embeddings_norm(x)
        visible = mask if kv_valid is None else kv_valid
        run = layers.maybe_remat(lambda layer, x, visible: layer(x, visible), self.config.remat)
        for layer in self.layers:
            x = run(layer, sharding.constrain_batch(x), visible)
        return x

    def hidden_states(self, input_ids, attention_mask=None):
        return self(input_ids, attention_mask)

    def pool(self, hidden, attention_mask):
        """[B,T,D] -> [B,D] float32 by config.pooling."""
        mode = self.config.pooling
        if mode == "mean":
            m = attention_mask.astype(jnp.float32)[..., None]
            return (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
        if mode == "cls":
            return hidden[:, 0].astype(jnp.float32)
        if self.pooler is None:
            raise ValueError("pooling='pooler' needs pooler weights (has_pooler=True)")
        return jnp.tanh(self.pooler(hidden[:, 0]).astype(jnp.float32))

    def pool_segments(self, hidden, segment_ids, num_segments: int):
        """[B,T,D] -> [B,S,D] float32 by config.pooling, one vector per segment 1..S of each row
        (segment_ids [B,T], 0 = padding): mean over its tokens, or its first token for cls /
        pooler (what pool() gives each sequence alone). An empty segment pools to zeros (mean)
        or to the row's first token; its score is not read."""
        member = (segment_ids[:, None, :] == jnp.arange(1, num_segments + 1)[None, :, None])
        mode = self.config.pooling
        if mode == "mean":
            m = member.astype(jnp.float32)  # [B,S,T]
            total = jnp.einsum("bst,btd->bsd", m, hidden.astype(jnp.float32))
            return total / jnp.maximum(m.sum(-1), 1e-9)[..., None]
        if mode == "pooler" and self.pooler is None:
            raise ValueError("pooling='pooler' needs pooler weights (has_pooler=True)")
        first = jnp.take_along_axis(hidden, jnp.argmax(member, axis=-1)[..., None], axis=1)
        if mode == "cls":
            return first.astype(jnp.float32)
        return jnp.tanh(self.pooler(first).astype(jnp.float32))

    def pooled(self, input_ids, attention_mask=None):
        mask = default_mask(input_ids, attention_mask)
        return self.pool(self(input_ids, mask), mask)


# Our module names -> HF's (dotted segments, longest match first).
HF_RENAMES = {
    "word_embeddings": "embeddings.word_embeddings",
    "position_embeddings": "embeddings.position_embeddings",
    "token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings_norm": "embeddings.LayerNorm",
    "layers": "encoder.layer",
    "attention.q_proj": "attention.self.query",
    "attention.k_proj": "attention.self.key",
    "attention.v_proj": "attention.self.value",
    "attention.o_proj": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output_norm": "output.LayerNorm",
    "output": "output.dense",
    "pooler": "pooler.dense",
}


def hf_path(name: str) -> str:
    """Our module path -> HF BertModel's."""
    parts = name.split(".")
    out, i = [], 0
    while i < len(parts):  # longest-match rename of dotted segments
        for span in (2, 1):
            key = ".".join(parts[i:i + span])
            if key in HF_RENAMES:
                out.append(HF_RENAMES[key])
                i += span
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def weight_overrides(names) -> dict:
    """Checkpoints may be saved without the pooler; only the tensor names tell."""
    return {"has_pooler": any(n in names for n in ("pooler.dense.weight",
                                                   "bert.pooler.dense.weight"))}


FAMILY = Family(
    name="bert", config_cls=BertConfig, model_cls=BertModel, hf_classes={"bert": "Bert"},
    hf_path=hf_path,
    reward_head="classifier", reward_prefix="bert.", pooled_reward_head=True,
    weight_overrides=weight_overrides,
    tiny_config=dict(model_type="bert", architectures=["BertModel"], hidden_size=64,
                     intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                     hidden_act="gelu"))
