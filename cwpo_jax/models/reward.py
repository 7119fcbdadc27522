"""Scalar reward head on any backbone: the paper's weak annotator (final layer -> a scalar).

Decoders score the last non-pad token (works with left or right padding); encoders score their
pooled output (mean or CLS, per the encoder config). packed_scores scores many sequences packed
end to end in each row, so a scoring pass computes no padding.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from cwpo_jax.models import layers
from cwpo_jax.models.base import default_mask
from cwpo_jax.models.bert import BertModel

HEAD_INIT_STD = 1e-3  # small, so initial rewards are ~0 and the BT loss starts at ~ln 2


def last_token_index(attention_mask):
    """Index of the last mask==1 position per row [B] (left or right padding)."""
    t = attention_mask.shape[1]
    return (t - 1) - jnp.argmax(attention_mask[:, ::-1].astype(jnp.int32), axis=1)


class RewardModel(nnx.Module):
    """`rm(input_ids, attention_mask) -> scores [B] float32`.

    `backbone` is a causal LM (its hidden_states are used; the LM head is unused) or a
    BertModel. `score` is Linear [D, 1] with a bias (zero unless loaded).
    """

    def __init__(self, backbone: nnx.Module, *, rngs: nnx.Rngs, head_bias: bool = False):
        self.backbone = backbone
        d = backbone.config.hidden_size
        if hasattr(backbone.config, "proj_dim"):  # OPT-350m: head reads project_out's output
            d = backbone.config.proj_dim
        param_dtype = layers.as_dtype(backbone.config.param_dtype)
        self.score = layers.Linear(d, 1, in_axes=("embed",), out_axes=(None,),
                                   use_bias=head_bias, dtype=jnp.float32,
                                   param_dtype=param_dtype, init_std=HEAD_INIT_STD, rngs=rngs)

    @property
    def config(self):
        return self.backbone.config

    def features(self, input_ids, attention_mask=None):
        """[B, D] the representation the head reads."""
        mask = default_mask(input_ids, attention_mask)
        hidden = self.backbone.hidden_states(input_ids, mask)
        if isinstance(self.backbone, BertModel):
            return self.backbone.pool(hidden, mask)
        idx = last_token_index(mask)
        return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]

    def __call__(self, input_ids, attention_mask=None):
        return self.score(self.features(input_ids, attention_mask).astype(jnp.float32))[:, 0]

    def packed_features(self, input_ids, attention_mask, positions, segment_ids,
                        num_segments: int):
        """[B, S, D]: the representation of each sequence packed in rows (segment_ids 1..S,
        0 = padding, positions restarting per sequence; data.collate_packed_sequences). Each
        sequence attends to itself only, so its features equal those of the sequence alone."""
        visible = (attention_mask.astype(bool)[:, None, :]
                   & (segment_ids[:, :, None] == segment_ids[:, None, :]))  # [B, T, T]
        if isinstance(self.backbone, BertModel):
            hidden = self.backbone(input_ids, attention_mask, positions=positions,
                                   kv_valid=visible)
            return self.backbone.pool_segments(hidden, segment_ids, num_segments)
        hidden, _ = self.backbone.forward(input_ids, attention_mask, positions=positions,
                                          kv_valid=visible)
        member = segment_ids[:, None, :] == jnp.arange(1, num_segments + 1)[None, :, None]
        last = (member.shape[-1] - 1) - jnp.argmax(member[..., ::-1], axis=-1)  # [B, S]
        return jnp.take_along_axis(hidden, last[..., None], axis=1)

    def packed_scores(self, input_ids, attention_mask, positions, segment_ids,
                      num_segments: int):
        """[B, S] float32 score of every packed sequence (see packed_features)."""
        features = self.packed_features(input_ids, attention_mask, positions, segment_ids,
                                        num_segments)
        return self.score(features.astype(jnp.float32))[..., 0]
