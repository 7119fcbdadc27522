import numpy as np
import pytest

from cwpo_jax import evaluation, gold


def test_gra_counts_ties_as_half_and_interval_brackets():
    out = evaluation.gold_reward_accuracy([1, 2, 3, 0], [0, 2, 5, -1], resamples=500)
    assert out["gra"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert out["ci_low"] <= out["gra"] <= out["ci_high"] and out["n"] == 4


def test_bootstrap_interval_covers_truth_and_shrinks():
    rng = np.random.default_rng(0)
    small = evaluation.bootstrap_interval(rng.random(50) < 0.7, resamples=1000)
    large = evaluation.bootstrap_interval(rng.random(5000) < 0.7, resamples=1000)
    assert large[1] < 0.7 < large[2]
    assert (large[2] - large[1]) < (small[2] - small[1])


def test_reliability_table_perfectly_calibrated():
    rng = np.random.default_rng(1)
    conf = rng.random(20000)
    p = (1 + conf) / 2
    correct = rng.random(20000) < p
    rows, ece = evaluation.reliability_table(conf, correct)
    assert sum(r["count"] for r in rows) == 20000
    assert ece < 0.02
    _, bad_ece = evaluation.reliability_table(conf, np.ones(20000, bool))
    assert bad_ece > 0.2


def test_simulated_raters_agree_with_gold_at_expected_rate_and_are_order_stable():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=4000), rng.normal(size=4000)
    ids = [f"x{i}" for i in range(4000)]
    labels = gold.simulate_human_labels(a, b, ids, temperature=0.5, seed=7)
    expected = np.mean(1 / (1 + np.exp(-np.abs(a - b) / 0.5)))
    assert np.mean(labels == (a > b)) == pytest.approx(expected, abs=0.02)
    perm = rng.permutation(4000)
    shuffled = gold.simulate_human_labels(a[perm], b[perm], [ids[i] for i in perm],
                                          temperature=0.5, seed=7)
    np.testing.assert_array_equal(shuffled, labels[perm])


def test_judges():
    lex = gold.make_judge("lexicon")
    s = lex.score(["q", "q"], ["what a great and happy day", "a sad and awful day"])
    assert s[0] > 0 > s[1]
    vader = gold.make_judge("vader")
    v = vader.score(["q", "q"], ["I love this, wonderful!", "This is terrible."])
    assert v[0] > 0.5 and v[1] < -0.3
    with pytest.raises(ValueError, match="gold judge"):
        gold.make_judge("oracle")
