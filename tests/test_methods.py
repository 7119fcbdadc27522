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
