"""The bisection nucleus threshold keeps the same tokens as the sort-based definition."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwpo_jax.models.sampling import nucleus_threshold


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.999])
def test_threshold_matches_sorted_prefix(top_p):
    logits = jax.random.normal(jax.random.key(3), (16, 5000)) * 2.5
    probs = np.asarray(jax.nn.softmax(logits, -1), np.float64)
    ordered = np.sort(probs, -1)[:, ::-1]
    cum = np.cumsum(ordered, -1)
    want = (cum - ordered < top_p).sum(-1)  # smallest prefix reaching top_p
    got = (probs >= np.asarray(nucleus_threshold(jnp.asarray(probs, jnp.float32), top_p))).sum(-1)
    # float32 sums may move a boundary token whose cumulative mass is top_p to within ~1e-7
    assert np.abs(got - want).max() <= 1
    assert (got >= 1).all()


def test_top_token_alone_when_it_holds_the_mass():
    probs = jnp.array([[0.97, 0.02, 0.01]])
    t = nucleus_threshold(probs, 0.9)
    assert np.asarray(probs >= t).sum() == 1
