"""The method table (stages/methods.py): every entry well formed, the one list config validation
reads, and its targets equal to the pure label sources of cwpo_jax.confidence."""
import numpy as np
import pytest

from cwpo_jax import confidence
from cwpo_jax.stages import config as config_lib
from cwpo_jax.stages import methods


def test_every_method_is_well_formed_and_validation_reads_the_table():
    assert config_lib.METHODS == tuple(methods.METHODS)
    for name, m in methods.METHODS.items():
        assert m.labels in methods.LABELS and m.weighting in methods.WEIGHTINGS, name
        assert m.keep in methods.KEEPS and m.pool in methods.POOLS and m.about, name
    for a, b in methods.DIFFERENCES:
        assert a in methods.METHODS and b in methods.METHODS


@pytest.mark.parametrize("name", ["human", "weak", "weak_confidence", "top_fraction"])
def test_targets_equal_the_confidence_label_sources(name):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=11), rng.normal(size=11)
    swap, weight, keep = methods.targets(methods.METHODS[name], 11, score_a=a, score_b=b,
                                         kind="c3", tau=0.7, fraction=0.3)
    want = confidence.pair_targets(name, score_a=a, score_b=b, kind="c3", tau=0.7, fraction=0.3)
    np.testing.assert_array_equal(swap, want.swap)
    np.testing.assert_array_equal(weight, want.weight)
    np.testing.assert_array_equal(keep, want.keep)


def test_gold_targets_follow_the_gold_order_and_drop_ties():
    gold = np.asarray([[0.5, 0.1], [0.2, 0.2], [0.0, 0.3]])
    swap, weight, keep = methods.targets(methods.METHODS["gold"], 3, gold=gold)
    assert list(swap) == [False, False, True] and list(keep) == [True, False, True]
    assert list(weight) == [1.0] * 3


# A hand-made pool of 5 pairs in human order: gaps 0.4, 0, -0.3, 0.1, -0.8.
POOL_GOLD = np.asarray([[0.5, 0.1], [0.2, 0.2], [0.0, 0.3], [0.6, 0.5], [-0.4, 0.4]])


def test_gold_weighted_oracle_weights_are_the_raters_confidence():
    t = 0.5
    swap, weight, keep = methods.targets(methods.METHODS["gold_weighted"], 5, gold=POOL_GOLD,
                                         rater_temperature=t)
    assert list(swap) == [False, False, True, False, True]
    assert list(keep) == [True, False, True, True, True]
    # 2 sigmoid(|gap| / T) - 1, by hand
    want = [2 / (1 + np.exp(-g / t)) - 1 for g in (0.4, 0.0, 0.3, 0.1, 0.8)]
    np.testing.assert_allclose(weight, want, rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        methods.targets(methods.METHODS["gold_weighted"], 5, gold=POOL_GOLD)


def test_gold_top_fraction_oracle_keeps_the_largest_gold_gaps():
    swap, weight, keep = methods.targets(methods.METHODS["gold_top_fraction"], 5, gold=POOL_GOLD,
                                         fraction=0.4)
    # ceil(0.4 * 5) = 2 largest |gap|: 0.8 (pair 4) and 0.4 (pair 0)
    assert list(keep) == [True, False, False, False, True]
    assert list(swap) == [False, False, True, False, True] and list(weight) == [1.0] * 5
    # a fraction reaching the tie keeps every decided pair and never the tie
    _, _, keep = methods.targets(methods.METHODS["gold_top_fraction"], 5, gold=POOL_GOLD,
                                 fraction=1.0)
    assert list(keep) == [True, False, True, True, True]


def test_rater_confidence_is_c1_of_the_gold_gap_over_t():
    a, b = np.asarray([0.9, -0.2, 0.3]), np.asarray([0.1, 0.4, 0.3])
    np.testing.assert_allclose(confidence.rater_confidence(a, b, 0.51),
                               confidence.confidence(a / 0.51, b / 0.51, kind="c1"), rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        confidence.rater_confidence(a, b, 0.0)
