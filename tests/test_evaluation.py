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


def brute_force_gra(policy, reference):
    """GRA by explicit loops: per prompt, every (policy sample, reference sample) comparison."""
    rates = []
    for a_row, b_row in zip(policy, reference):
        wins = [1.0 if a > b else 0.0 if a < b else 0.5 for a in a_row for b in b_row]
        rates.append(sum(wins) / len(wins))
    return np.asarray(rates)


def test_gra_with_k_samples_matches_brute_force_and_resamples_prompts():
    rng = np.random.default_rng(3)
    policy = rng.integers(0, 4, (30, 3)).astype(float)  # small integers: many ties
    reference = rng.integers(0, 4, (30, 3)).astype(float)
    rates = brute_force_gra(policy, reference)
    np.testing.assert_allclose(evaluation.prompt_win_rates(policy, reference), rates)
    out = evaluation.gold_reward_accuracy(policy, reference, seed=5, resamples=400)
    mean, low, high = evaluation.bootstrap_interval(rates, seed=5, resamples=400)
    assert (out["gra"], out["ci_low"], out["ci_high"], out["n"]) == pytest.approx(
        (mean, low, high, 30))
    # k x k comparisons differ from pairing sample j with sample j only
    paired = evaluation.gold_reward_accuracy(policy.ravel(), reference.ravel(), resamples=10)
    assert paired["gra"] != pytest.approx(out["gra"]) and paired["n"] == 90
    # one sample per prompt: [P] and [P, 1] give the single-sample GRA
    one = evaluation.gold_reward_accuracy(policy[:, 0], reference[:, :1], resamples=10)
    assert one["gra"] == pytest.approx(brute_force_gra(policy[:, :1], reference[:, :1]).mean())
    with pytest.raises(ValueError, match="same P"):
        evaluation.prompt_win_rates(policy, reference[:-1])


def test_seed_interval_is_the_t_interval_over_runs():
    out = evaluation.seed_interval([0.4, 0.5, 0.6])
    assert out["mean"] == pytest.approx(0.5) and out["sd"] == pytest.approx(0.1)
    half = 4.302653 * 0.1 / np.sqrt(3)  # t_{0.975, 2}
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-6)
    single = evaluation.seed_interval([0.7])
    assert single["mean"] == 0.7 and single["sd"] is None and single["ci_low"] is None


def test_interpolation_matrix_against_hand_interpolation():
    from cwpo_jax.evaluation import interpolation_matrix

    x, y = np.asarray([3.0, 1.0, 2.0]), np.asarray([30.0, 10.0, 25.0])  # x not sorted
    c = interpolation_matrix(x, [1.5, 2.5, 3.0])
    np.testing.assert_allclose(c @ y, [17.5, 27.5, 30.0])
    np.testing.assert_allclose(c.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="outside"):
        interpolation_matrix(x, [3.5])
    with pytest.raises(ValueError, match="distinct"):
        interpolation_matrix([1.0, 1.0], [1.0])


def test_matched_kl_difference_against_hand_computation():
    from cwpo_jax.evaluation import matched_contrast, shared_range

    # A: GRA 0.5 + 0.1 (KL - 1) on KL [1, 3]; B: 0.4 + 0.2 (KL - 2) on [2, 4]. On the shared
    # range [2, 3], A - B = 0.4 - 0.1 KL, whose mean over the range is 0.4 - 0.25 = 0.15.
    kl_a, gra_a = [1.0, 3.0], np.asarray([0.5, 0.7])
    kl_b, gra_b = [4.0, 2.0], np.asarray([0.8, 0.4])
    assert shared_range(kl_a, kl_b) == (2.0, 3.0)
    c_a, c_b = matched_contrast(kl_a, kl_b)
    assert c_a @ gra_a - c_b @ gra_b == pytest.approx(0.15)
    assert matched_contrast([1.0, 2.0], [3.0, 4.0]) is None
    # One point (an oracle) against a curve: the curve at the point's KL, 2.5 -> A = 0.65.
    c_a, c_b = matched_contrast(kl_a, [2.5])
    assert c_a @ gra_a - c_b @ np.asarray([0.6]) == pytest.approx(0.05)
    assert matched_contrast(kl_a, [3.5]) is None and matched_contrast([1.0], [1.0]) is None


def test_hierarchical_bootstrap_spread_matches_the_two_stage_variance():
    from cwpo_jax.evaluation import hierarchical_bootstrap

    # Two-stage resampling of S groups: Var = (1/S) [var over groups of their means (divided
    # by S) + mean over groups of var_g / P_g (divided by P_g)]. By hand for these groups:
    # means 0.5, 1, 0.5 -> 1/18; var_g / P_g = 0.125, 0, 1/18 -> mean 0.0601852.
    groups = [np.asarray([0.0, 1.0]), np.ones(4), np.asarray([0.0, 0.5, 1.0])]
    want_sd = np.sqrt((1 / 18 + (0.125 + 0.0 + 1 / 18) / 3) / 3)
    out = hierarchical_bootstrap(groups, resamples=40000, seed=2)
    assert out["mean"] == pytest.approx(2 / 3) and out["groups"] == 3
    # the 95% interval of a near-normal statistic is about mean +- 1.96 sd
    assert (out["ci_high"] - out["ci_low"]) / (2 * 1.96) == pytest.approx(want_sd, rel=0.08)
    # Two one-unit groups 0 and 1: resample means 0, 0.5, 1 with chances 1/4, 1/2, 1/4.
    tiny = hierarchical_bootstrap([np.zeros(1), np.ones(1)], resamples=4000)
    assert (tiny["mean"], tiny["ci_low"], tiny["ci_high"]) == (0.5, 0.0, 1.0)
    # Within-group noise alone (one group) is the ordinary bootstrap of its mean.
    one = hierarchical_bootstrap([np.full(5, 0.3)])
    assert one["ci_low"] == one["ci_high"] == pytest.approx(0.3) and one["sd_between"] is None
    with pytest.raises(ValueError, match="non-empty"):
        hierarchical_bootstrap([np.zeros(0)])
