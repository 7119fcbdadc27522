"""KV-cache sampler: greedy == uncached step-by-step argmax == transformers generate; EOS, top-p."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cwpo_jax.models import from_pretrained, generate, sample_logits
from tests.models.conftest import fixture_dir, golden


def _argmax_no_cache(model, ids, mask, n):
    """Reference: re-run the full model (no cache) each step on the growing sequence. The
    sequence sits in a fixed [B, P + n] buffer, right-padded, so one compiled forward serves all
    steps (right pads are invisible to a causal model)."""
    b, p = ids.shape
    buf = np.zeros((b, p + n), np.int32)
    buf_mask = np.zeros((b, p + n), np.int32)
    buf[:, :p], buf_mask[:, :p] = ids, mask
    forward = nnx.jit(lambda m, i, a: m(i, a))
    for t in range(n):
        logits = np.asarray(forward(model, jnp.asarray(buf), jnp.asarray(buf_mask)))
        buf[:, p + t] = logits[:, p + t - 1].argmax(-1)
        buf_mask[:, p + t] = 1
    return buf[:, p:]


@pytest.mark.parametrize("family", ["llama", "mistral", "opt350"])
def test_greedy_equals_uncached_argmax(family):
    model = from_pretrained(fixture_dir(family))
    ids = np.array([[5, 9, 17, 33, 4, 8, 100], [0, 0, 0, 21, 22, 23, 24]], np.int32)
    mask = np.array([[1] * 7, [0, 0, 0, 1, 1, 1, 1]], np.int32)
    gen = generate(model, ids, mask, max_new_tokens=8, temperature=0.0, eos_token_id=[])
    np.testing.assert_array_equal(np.asarray(gen.tokens), _argmax_no_cache(model, ids, mask, 8))
    assert np.asarray(gen.mask).all()


def test_greedy_equals_transformers_generate():
    g = golden("llama_generate")
    model = from_pretrained(fixture_dir("llama"))
    n = g["output"].shape[1]
    gen = generate(model, g["input_ids"], g["attention_mask"], max_new_tokens=n,
                   temperature=0.0)
    np.testing.assert_array_equal(np.asarray(gen.tokens), g["output"])


def test_per_row_eos_stop_and_mask():
    model = from_pretrained(fixture_dir("llama"))
    ids = np.array([[5, 9, 17, 33], [0, 21, 22, 23]], np.int32)
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 1]], np.int32)
    free = np.asarray(generate(model, ids, mask, max_new_tokens=6, temperature=0.0,
                               eos_token_id=[]).tokens)
    eos = int(free[0, 2])  # make row 0's third greedy token the EOS
    gen = generate(model, ids, mask, max_new_tokens=6, temperature=0.0, eos_token_id=eos,
                   pad_token_id=0)
    toks, m = np.asarray(gen.tokens), np.asarray(gen.mask)
    for row in range(2):
        hits = np.flatnonzero(free[row] == eos)
        stop = hits[0] if hits.size else 5
        # Same tokens up to and including the EOS (which counts as generated), pads after.
        np.testing.assert_array_equal(m[row], (np.arange(6) <= stop).astype(int))
        np.testing.assert_array_equal(toks[row, :stop + 1], free[row, :stop + 1])
        np.testing.assert_array_equal(toks[row, stop + 1:], 0)
    assert m[0].sum() <= 3


def test_sampling_is_reproducible_and_needs_a_key():
    model = from_pretrained(fixture_dir("qwen2"))
    ids = np.array([[5, 9, 17, 33]], np.int32)
    a = generate(model, ids, key=jax.random.key(0), max_new_tokens=12, temperature=1.0,
                 top_p=0.9, eos_token_id=[])
    b = generate(model, ids, key=jax.random.key(0), max_new_tokens=12, temperature=1.0,
                 top_p=0.9, eos_token_id=[])
    c = generate(model, ids, key=jax.random.key(1), max_new_tokens=12, temperature=1.0,
                 top_p=0.9, eos_token_id=[])
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    with pytest.raises(ValueError, match="key"):
        generate(model, ids, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, np.array([[1, 1, 1, 0]]), max_new_tokens=2, temperature=0.0)


def test_top_p_keeps_the_nucleus_only():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.key(0)
    draws = np.asarray(sample_logits(logits, keys, jnp.float32(1.0), jnp.float32(0.7)))
    assert set(np.unique(draws)) == {0, 1}  # 0.5 < 0.7 needs token 1; 0.8 >= 0.7 stops
    frac = (draws == 0).mean()
    assert abs(frac - 0.5 / 0.8) < 0.05  # renormalised within the nucleus
    tiny = np.asarray(sample_logits(logits, keys, jnp.float32(1.0), jnp.float32(1e-6)))
    assert (tiny == 0).all()
    greedy = np.asarray(sample_logits(logits, keys, jnp.float32(0.0), jnp.float32(1.0)))
    assert (greedy == 0).all()


def test_bf16_model_generates_with_a_bf16_cache():
    model = from_pretrained(fixture_dir("llama"), dtype="bfloat16")
    assert model.init_cache(1, 4)[0][0].dtype == jnp.bfloat16
    ids = np.array([[5, 9, 17, 33]], np.int32)
    gen = generate(model, ids, key=jax.random.key(0), max_new_tokens=5, temperature=0.7,
                   top_p=0.9, eos_token_id=[])
    toks = np.asarray(gen.tokens)
    assert toks.shape == (1, 5) and toks.dtype == np.int32
    assert ((toks >= 0) & (toks < 128)).all() and np.asarray(gen.mask).all()
