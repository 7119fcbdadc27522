"""A tiny causal LM with logical axis names, for engine tests independent of the model zoo."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _param(rngs, shape, names, scale=0.5):
    value = jax.random.normal(rngs.params(), shape) * scale / np.sqrt(shape[0])
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class ToyLM(nnx.Module):
    def __init__(self, vocab=32, dim=16, mlp=32, *, rngs):
        self.embed = _param(rngs, (vocab, dim), ("vocab", "embed"), scale=1.0)
        self.w_in = _param(rngs, (dim, mlp), ("embed", "mlp"))
        self.w_out = _param(rngs, (mlp, dim), ("mlp", "embed"))
        self.head = _param(rngs, (dim, vocab), ("embed", "vocab"))
        self.norm = nnx.Param(jnp.ones((dim,)), out_sharding=("norm",), eager_sharding=False)

    def hidden_states(self, input_ids, attention_mask=None):
        x = self.embed[...][input_ids]
        mask = jnp.ones(input_ids.shape) if attention_mask is None else attention_mask
        # causal context: running mean of the previous tokens
        csum = jnp.cumsum(x * mask[..., None], axis=1)
        count = jnp.maximum(jnp.cumsum(mask, axis=1), 1.0)[..., None]
        x = x + csum / count
        x = x + jnp.tanh(x @ self.w_in[...]) @ self.w_out[...]
        return x * self.norm[...]

    def lm_head_matrix(self):
        return self.head[...]

    def __call__(self, input_ids, attention_mask=None):
        return self.hidden_states(input_ids, attention_mask) @ self.head[...]


class ToyReward(nnx.Module):
    def __init__(self, vocab=32, dim=16, *, rngs):
        self.lm = ToyLM(vocab, dim, rngs=rngs)
        self.score = _param(rngs, (dim, 1), ("embed", None))

    def __call__(self, input_ids, attention_mask):
        h = self.lm.hidden_states(input_ids, attention_mask)
        last = jnp.sum(attention_mask, axis=1).astype(jnp.int32) - 1
        return (h[jnp.arange(h.shape[0]), last] @ self.score[...])[:, 0]


def pair_batch(seed, pairs=8, length=12, vocab=32):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (2 * pairs, length)).astype(np.int32)
    attn = np.ones_like(ids)
    lengths = rng.integers(length // 2, length + 1, 2 * pairs)
    for i, n in enumerate(lengths):
        attn[i, n:] = 0
        ids[i, n:] = 0
    resp = attn.copy()
    resp[:, :4] = 0  # a 4-token prompt
    return {
        "input_ids": ids, "attention_mask": attn, "response_mask": resp,
        "weights": rng.random(pairs).astype(np.float32),
        "valid": np.ones(pairs, np.float32),
        "ref_logps": (-rng.random(2 * pairs) * 20).astype(np.float32),
    }


def tokenized_pairs(n=20, vocab=32, seed=0):
    from cwpo_jax.data.tokenize import TokenizedPair

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        prompt = rng.integers(1, vocab, rng.integers(2, 6)).astype(np.int32)
        chosen = rng.integers(1, vocab, rng.integers(1, 8)).astype(np.int32)
        rejected = rng.integers(1, vocab, rng.integers(1, 8)).astype(np.int32)
        items.append(TokenizedPair(prompt, chosen, rejected))
    return items
