"""Interface shared by the causal LMs (Llama family, OPT): logits, hidden states, LM head, cache.

A family implements `forward(input_ids, attention_mask, positions=None, cache=None,
cache_index=None, kv_valid=None) -> (hidden [B,T,D], new_cache)`, `lm_head_matrix()` and
`init_cache(batch, length, dtype)`; everything else is here.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


def default_mask(input_ids, attention_mask):
    if attention_mask is None:
        return jnp.ones(input_ids.shape, jnp.int32)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape "
                         f"{input_ids.shape}")
    return attention_mask


class CausalLM(nnx.Module):
    """Mixin: `model(ids, mask) -> logits [B,T,V] float32`."""

    def __call__(self, input_ids, attention_mask=None):
        return self.logits_from_hidden(self.hidden_states(input_ids, attention_mask))

    def hidden_states(self, input_ids, attention_mask=None):
        """Final normed hidden states [B, T, D] (compute dtype)."""
        hidden, _ = self.forward(input_ids, attention_mask)
        return hidden

    def logits_from_hidden(self, hidden):
        """[..., D] -> [..., V] float32 logits through the LM head."""
        w = self.lm_head_matrix()
        return jnp.einsum("...d,dv->...v", hidden, w.astype(hidden.dtype),
                          preferred_element_type=jnp.float32).astype(jnp.float32)

    def init_cache(self, batch: int, length: int, dtype=None):
        """Zeroed KV cache: a list with one (k, v) pair [B, length, KV, hd] per layer."""
        cfg = self.config
        dtype = dtype or self.dtype
        shape = (batch, length, cfg.num_key_value_heads, cfg.head_dim)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
                for _ in range(cfg.num_hidden_layers)]
