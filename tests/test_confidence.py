import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwpo_jax import confidence as cf


def test_weak_labels_ties_go_to_a():
    a = jnp.array([1.0, 0.0, 2.0])
    b = jnp.array([0.0, 1.0, 2.0])
    np.testing.assert_array_equal(cf.weak_labels(a, b), [True, False, True])


def test_confidence_kinds_against_formulas():
    a = np.array([0.0, 1.0, -3.0, 2.5])
    b = np.array([0.0, -1.0, 2.0, 2.0])
    d = np.abs(a - b).astype(np.float64)
    np.testing.assert_allclose(cf.confidence(a, b), 2 / (1 + np.exp(-d)) - 1, rtol=1e-6)
    np.testing.assert_allclose(cf.confidence(a, b, kind="c2"), 1 / (1 + np.exp(-d)), rtol=1e-6)
    np.testing.assert_allclose(cf.confidence(a, b, kind="c3", tau=4.0), np.minimum(d / 4, 1))
    assert cf.confidence(a, b)[0] == 0.0  # a tie carries no confidence


def test_confidence_is_symmetric():
    a, b = jnp.array([0.3, -2.0]), jnp.array([1.7, 4.0])
    for kind in cf.CONFIDENCE_KINDS:
        np.testing.assert_allclose(cf.confidence(a, b, kind=kind), cf.confidence(b, a, kind=kind))


@settings(max_examples=60, deadline=None)
@given(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.sampled_from(cf.CONFIDENCE_KINDS))
def test_confidence_in_unit_interval_and_finite(a, b, kind):
    c = float(cf.confidence(jnp.array([a]), jnp.array([b]), kind=kind, tau=2.0)[0])
    assert math.isfinite(c) and 0.0 <= c <= 1.0


def test_confidence_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        cf.confidence(jnp.zeros(1), jnp.zeros(1), kind="c9")
    with pytest.raises(ValueError, match="tau"):
        cf.confidence(jnp.zeros(1), jnp.zeros(1), kind="c3", tau=0.0)


def test_confidence_grad_and_jit():
    f = jax.jit(lambda a, b: jnp.sum(cf.confidence(a, b)))
    g = jax.grad(f)(jnp.array([1.0, -1.0]), jnp.array([0.0, 0.0]))
    np.testing.assert_allclose(g, [0.5 * (1 - np.tanh(0.5) ** 2), -0.5 * (1 - np.tanh(0.5) ** 2)],
                               rtol=1e-6)


def test_top_fraction_mask_count_and_ties():
    conf = jnp.array([0.1, 0.9, 0.5, 0.5, 0.5, 0.2, 0.0, 0.7, 0.3, 0.4])
    mask = np.asarray(cf.top_fraction_mask(conf, 0.3))
    assert mask.sum() == 3  # ceil(0.3 * 10) is 3, despite 0.3 * 10 = 3.0000000000000004
    np.testing.assert_array_equal(np.flatnonzero(mask), [1, 2, 7])  # tie at 0.5: first one wins
    assert np.asarray(cf.top_fraction_mask(conf, 0.31)).sum() == 4
    assert np.asarray(cf.top_fraction_mask(conf, 0.0)).sum() == 0
    assert np.asarray(cf.top_fraction_mask(conf, 1.0)).all()
    with pytest.raises(ValueError, match="fraction"):
        cf.top_fraction_mask(conf, 1.5)


@settings(max_examples=40, deadline=None)
# XLA on CPU flushes subnormals to zero, so they would tie with 0.0: keep them out.
@given(st.lists(st.floats(0, 1, width=32, allow_subnormal=False), min_size=1, max_size=50), st.floats(0, 1))
def test_top_fraction_selects_the_largest(values, fraction):
    conf = np.asarray(values, np.float32)
    mask = np.asarray(cf.top_fraction_mask(conf, fraction))
    assert mask.sum() == cf.top_fraction_count(len(conf), fraction)
    if 0 < mask.sum() < len(conf):
        assert conf[mask].min() >= conf[~mask].max()


def test_pair_targets_sources():
    sa = jnp.array([2.0, -1.0, 0.5, 3.0])
    sb = jnp.array([1.0, 1.0, 0.5, -10.0])
    human = cf.pair_targets("human", n=4)
    assert not human.swap.any() and (human.weight == 1).all() and human.keep.all()
    weak = cf.pair_targets("weak", score_a=sa, score_b=sb)
    np.testing.assert_array_equal(weak.swap, [False, True, False, False])
    assert (weak.weight == 1).all() and weak.keep.all()
    cw = cf.pair_targets("weak_confidence", score_a=sa, score_b=sb)
    np.testing.assert_array_equal(cw.swap, weak.swap)
    np.testing.assert_allclose(cw.weight, np.tanh(np.abs(np.asarray(sa - sb)) / 2), rtol=1e-6)
    top = cf.pair_targets("top_fraction", score_a=sa, score_b=sb, fraction=0.5)
    np.testing.assert_array_equal(top.keep, [False, True, False, True])
    assert (top.weight == 1).all()


def test_top_fraction_ranks_by_margin_beyond_float32_saturation():
    # c1 is exactly 1.0 in float32 for both margins; ranking must still prefer the larger one
    sa = jnp.array([40.0, 90.0])
    sb = jnp.zeros(2)
    assert (cf.confidence(sa, sb) == 1.0).all()
    top = cf.pair_targets("top_fraction", score_a=sa, score_b=sb, fraction=0.5)
    np.testing.assert_array_equal(top.keep, [False, True])


def test_pair_targets_errors():
    with pytest.raises(ValueError, match="label source"):
        cf.pair_targets("gold")
    with pytest.raises(ValueError, match="score_a and score_b"):
        cf.pair_targets("weak", score_a=jnp.zeros(2))
    with pytest.raises(ValueError, match="equal length"):
        cf.pair_targets("weak", score_a=jnp.zeros(2), score_b=jnp.zeros(3))
    with pytest.raises(ValueError, match="fraction"):
        cf.pair_targets("top_fraction", score_a=jnp.zeros(2), score_b=jnp.zeros(2))
