"""The hand-written pieces of models.layers against plain references in float64: `project`'s
custom gradient against autodiff of the same contraction, and `attend` against a textbook
softmax attention with the mask applied by a select."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwpo_jax.models import layers


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("x_shape,k_shape,n_in", [
    ((2, 3, 5), (5, 4), 1),          # [B,T,D] . [D,F]
    ((3, 5), (5, 2, 3), 1),          # q_proj-like: [D] -> [heads, head_dim]
    ((2, 3, 4, 6), (4, 6, 7), 2),    # o_proj-like: [heads, head_dim] -> [D]
])
def test_project_gradient_equals_autodiff(x_shape, k_shape, n_in):
    rng = np.random.default_rng(0)
    x, k = jnp.asarray(rng.normal(size=x_shape)), jnp.asarray(rng.normal(size=k_shape))
    contract = (tuple(range(len(x_shape) - n_in, len(x_shape))), tuple(range(n_in)))

    def plain(x, k):
        return jnp.sin(jax.lax.dot_general(x, k, (contract, ((), ())))).sum()

    def custom(x, k):
        return jnp.sin(layers.project(x, k, n_in)).sum()

    assert np.allclose(custom(x, k), plain(x, k), rtol=1e-14)
    for got, want in zip(jax.grad(custom, (0, 1))(x, k), jax.grad(plain, (0, 1))(x, k)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _reference_attention(q, k, v, visible, scale):
    """q [B,T,H,hd], k/v [B,S,KV,hd], visible [B,T,S]: each head attends with its group's KV."""
    g = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) * scale
    logits = jnp.where(visible[:, None], logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


@pytest.mark.parametrize("heads,kv_heads,causal,per_query", [
    (4, 4, False, False), (6, 2, True, False), (6, 3, True, True), (4, 1, False, True)])
def test_attend_matches_select_masked_softmax(heads, kv_heads, causal, per_query):
    rng = np.random.default_rng(1)
    b, t, hd = 2, 7, 4
    q = jnp.asarray(rng.normal(size=(b, t, heads, hd)))
    k, v = (jnp.asarray(rng.normal(size=(b, t, kv_heads, hd))) for _ in range(2))
    valid = np.ones((b, t), bool)
    valid[1, 5:] = False  # right padding in the second row
    if per_query:  # two segments per row, each attending to itself only
        seg = np.array([1, 1, 1, 2, 2, 2, 2])
        kv_valid = (seg[None, :, None] == seg[None, None, :]) & valid[:, None, :]
    else:
        kv_valid = valid
    got = layers.attend(q, k, v, kv_valid=jnp.asarray(kv_valid), q_slots=jnp.arange(t),
                        causal=causal, scale=hd ** -0.5)
    visible = np.broadcast_to(kv_valid if per_query else kv_valid[:, None, :], (b, t, t))
    if causal:
        visible = visible & np.tril(np.ones((t, t), bool))[None]
    want = _reference_attention(q, k, v, jnp.asarray(visible), hd ** -0.5)
    rows = visible.any(-1)  # queries with at least one visible key (pads may see none)
    # attend keeps logits and softmax in float32 by design: float32 agreement, where a wrong
    # mask or group mapping would be off by ~0.1.
    np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(want)[rows], rtol=1e-5,
                               atol=1e-6)
