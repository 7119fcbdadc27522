"""The experiment's statistics against brute force and hand computations: label quality, the
KL estimate, implicit-reward accuracy, confidence deciles, paired intervals, and the refusal of
the gold method where no gold exists."""
import itertools

import numpy as np
import pytest
from scipy import stats

from cwpo_jax import evaluation
from cwpo_jax.stages import config as config_lib
from cwpo_jax.stages.sweep import _differences


def test_label_quality_against_brute_force():
    rng = np.random.default_rng(0)
    n = 40
    a_wins, keep = rng.random(n) < 0.6, rng.random(n) < 0.8
    w = rng.random(n)
    ga, gb = rng.integers(0, 3, n).astype(float), rng.integers(0, 3, n).astype(float)
    q = evaluation.label_quality(a_wins, w, keep, ga, gb)
    right = wsum_right = wsum = decided = tie_w = total_w = 0.0
    for i in range(n):
        if not keep[i]:
            continue
        total_w += w[i]
        if ga[i] == gb[i]:
            tie_w += w[i]
            continue
        ok = float(a_wins[i] == (ga[i] > gb[i]))
        right, decided = right + ok, decided + 1
        wsum_right, wsum = wsum_right + w[i] * ok, wsum + w[i]
    assert q["pairs"] == keep.sum()
    assert q["gold_accuracy"] == pytest.approx(right / decided)
    assert q["weighted_gold_accuracy"] == pytest.approx(wsum_right / wsum)
    assert q["tie_weight_share"] == pytest.approx(tie_w / total_w)


def test_label_quality_of_an_empty_selection_is_nan_not_an_error():
    q = evaluation.label_quality([True], [1.0], [False], [1.0], [0.0])
    assert q["pairs"] == 0 and np.isnan(q["gold_accuracy"]) and q["tie_weight_share"] == 0.0


def test_kl_estimate_converges_to_the_exact_kl_of_small_categoricals():
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    exact = float(np.sum(pi * np.log(pi / ref)))  # brute force over the 4 outcomes
    draws = np.random.default_rng(0).choice(4, size=200_000, p=pi)
    est = evaluation.kl_estimate(np.log(pi)[draws], np.log(ref)[draws])
    assert est == pytest.approx(exact, abs=0.01)
    # Sequences: log-probs sum over tokens, so the KL of two independent tokens doubles.
    seq = np.random.default_rng(1).choice(4, size=(200_000, 2), p=pi)
    est2 = evaluation.kl_estimate(np.log(pi)[seq].sum(1), np.log(ref)[seq].sum(1))
    assert est2 == pytest.approx(2 * exact, abs=0.02)
    assert evaluation.kl_estimate(np.log(ref)[draws], np.log(ref)[draws]) == 0.0


def test_implicit_reward_accuracy_counts_ties_half():
    acc = evaluation.implicit_reward_accuracy([-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0],
                                              [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert acc == pytest.approx((1 + 0 + 0.5) / 3)
    # An unmoved policy (policy == reference) scores exactly one half.
    x = np.random.default_rng(0).normal(size=10)
    assert evaluation.implicit_reward_accuracy(x, x[::-1], x, x[::-1]) == 0.5


def test_accuracy_by_decile_bins_every_pair_once():
    rng = np.random.default_rng(0)
    conf = rng.random(101)
    correct = rng.random(101) < conf
    rows = evaluation.accuracy_by_decile(conf, correct)
    assert len(rows) == 10 and sum(r["count"] for r in rows) == 101
    for r in rows:
        sel = (conf >= r["c_low"]) & ((conf < r["c_high"]) | (r is rows[-1]))
        assert r["count"] == sel.sum()
        assert r["accuracy"] == pytest.approx(correct[sel].mean())
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]


def test_correlation_matches_numpy_and_is_nan_for_constants():
    x, y = np.arange(5.0), np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    assert evaluation.correlation(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert np.isnan(evaluation.correlation(x, np.ones(5)))


def test_paired_difference_against_a_hand_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.random(60)
    x = np.clip(base + rng.normal(0.08, 0.05, 60), 0, 1)  # strongly paired with y
    y = base
    d = evaluation.paired_difference(x, y, seed=0, resamples=4000)
    assert d["diff"] == pytest.approx(x.mean() - y.mean())
    # Hand computation: resample prompts (both methods together), percentile interval.
    idx = np.random.default_rng(1).integers(0, 60, (20000, 60))
    boot = (x[idx] - y[idx]).mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    assert d["ci_low"] == pytest.approx(low, abs=0.004)
    assert d["ci_high"] == pytest.approx(high, abs=0.004)
    assert d["interval"] == "paired bootstrap (BCa)"
    # Pairing matters: an unpaired interval of the same difference is several times wider.
    unpaired = (x[idx].mean(1) - y[np.random.default_rng(2).integers(0, 60, (20000, 60))].mean(1))
    assert np.subtract(*np.quantile(unpaired, [0.975, 0.025])) > 3 * (high - low)


def test_paired_difference_falls_back_to_percentile_when_bca_is_undefined():
    x = np.full(20, 0.75)
    d = evaluation.paired_difference(x, np.full(20, 0.5))
    assert d["diff"] == d["ci_low"] == d["ci_high"] == pytest.approx(0.25)
    assert "BCa" not in d["interval"]


def test_sweep_differences_are_t_intervals_of_per_seed_differences():
    runs = [{"methods": {"weak_confidence": {"gra": g1}, "human": {"gra": g2}}}
            for g1, g2 in [(0.61, 0.55), (0.58, 0.57), (0.66, 0.52)]]
    d = _differences(runs)["weak_confidence-human"]
    per_seed = np.array([0.06, 0.01, 0.14])
    half = stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / np.sqrt(3)
    assert d["diff"] == pytest.approx(per_seed.mean())
    assert d["ci_low"] == pytest.approx(per_seed.mean() - half)
    assert d["ci_high"] == pytest.approx(per_seed.mean() + half)
    assert d["per_seed"] == pytest.approx(list(per_seed))


def test_gold_method_is_refused_for_file_data(tmp_path):
    from cwpo_jax.stages.defaults import defaults

    cfg = defaults()
    cfg.output_dir = str(tmp_path)
    cfg.data.path = "pairs.jsonl"
    cfg.annotator.model = cfg.sft.model = "tiny:llama"
    cfg.align.methods = ("human", "gold")
    with pytest.raises(config_lib.ConfigError, match=r"align.methods: 'gold' needs gold"):
        config_lib.validate(cfg)
    cfg.data.source, cfg.data.num_pairs, cfg.data.rater_temperature = "synthetic", 96, 0.3
    config_lib.validate(cfg)  # a controlled setting has gold


def test_gold_targets_need_gold_scores_on_disk(tmp_path):
    from cwpo_jax.stages import align
    from cwpo_jax.stages.defaults import defaults

    cfg = defaults()
    cfg.output_dir = str(tmp_path)
    with pytest.raises(ValueError, match="needs gold scores"):
        align.method_targets(cfg, "gold", ["a", "b"], 0)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gold.json").write_text('{"a": [0.5, 0.1], "b": [0.2, 0.2], '
                                                 '"c": [0.0, 0.3]}')
    swap, weight, keep = align.method_targets(cfg, "gold", ["x", "a", "b", "c"], 1)
    assert list(keep) == [False, True, False, True]  # labelled pair and the gold tie dropped
    assert list(swap[keep]) == [False, True] and list(weight) == [1.0] * 4


@pytest.mark.parametrize("rule", ["first_two", "best_vs_random", "best_vs_rest"])
def test_demo_pairs_from_sampled_responses(rule):
    from cwpo_jax import gold
    from cwpo_jax.stages.prepare import demo_triples

    judge = gold.LexiconJudge()
    pool = [("p1", ["bad day", "great great day", "a day", "good day"]),
            ("p2", ["same", "same", ""]),  # one distinct non-empty response: dropped
            ("p3", ["awful", "fine", "nice"])]
    triples, dropped = demo_triples(pool, judge, rule=rule, seed=0)
    per_prompt = {"first_two": [1, 1], "best_vs_random": [1, 1], "best_vs_rest": [3, 2]}[rule]
    assert dropped == 1
    assert [t[0] for t in triples] == ["p1"] * per_prompt[0] + ["p3"] * per_prompt[1]
    for prompt, a, b, ga, gb in triples:
        responses = dict(pool)[prompt]
        assert a in responses and b in responses and a != b
        assert (ga, gb) == tuple(judge.score([prompt] * 2, [a, b]))
        if rule != "first_two":
            assert ga == max(judge.score([prompt] * len(responses), responses))
        else:
            assert (a, b) == tuple(responses[:2])
    if rule == "best_vs_rest":  # every other response exactly once
        assert sorted(t[2] for t in triples if t[0] == "p1") == sorted(
            r for r in dict(pool)["p1"] if r != triples[0][1])
    again, _ = demo_triples(pool, judge, rule=rule, seed=0)
    assert again == triples
    others = {demo_triples(pool, judge, rule="best_vs_random", seed=s)[0][0][2]
              for s in range(12)}
    assert len(others) > 1  # the random other depends on the seed


def test_per_prompt_keys_make_samples_independent_of_batching():
    """Common random numbers: the same model, seed and row ids give the same samples whatever
    the batch size and whichever other prompts are sampled alongside."""
    import jax

    from cwpo_jax.models import from_pretrained, generate
    from tests.models.conftest import fixture_dir

    model = from_pretrained(fixture_dir("llama"))
    ids = np.array([[5, 9, 17, 33], [0, 21, 22, 23], [7, 7, 8, 9]], np.int32)
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], np.int32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(np.arange(3))
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.95, eos_token_id=[])
    whole = np.asarray(generate(model, ids, mask, key=keys, **kw).tokens)
    for rows in itertools.permutations(range(3), 2):
        part = np.asarray(generate(model, ids[list(rows)], mask[list(rows)],
                                   key=keys[np.array(rows)], **kw).tokens)
        np.testing.assert_array_equal(part, whole[list(rows)])
    other = np.asarray(generate(model, ids, mask, key=keys[::-1], **kw).tokens)
    assert not np.array_equal(other, whole)
    with pytest.raises(ValueError, match="one per row"):
        generate(model, ids, mask, key=keys[:2], **kw)


def test_rater_temperature_reaches_the_asked_agreement():
    from cwpo_jax import gold

    rng = np.random.default_rng(0)
    ga, gb = rng.normal(size=500), rng.normal(size=500)
    gb[:50] = ga[:50]  # gold ties are left out of the agreement
    t = gold.rater_temperature(ga, gb, 0.7)
    gaps = np.abs(ga - gb)[50:]
    assert np.mean(1 / (1 + np.exp(-gaps / t))) == pytest.approx(0.7, abs=1e-9)
    # and the simulated raters then agree about that often
    ids = [str(i) for i in range(500)]
    picks = gold.simulate_human_labels(ga, gb, ids, temperature=t, seed=0)
    assert np.mean(picks[50:] == (ga > gb)[50:]) == pytest.approx(0.7, abs=0.06)
    with pytest.raises(ValueError, match="agreement"):
        gold.rater_temperature(ga, gb, 0.4)


def test_heldout_pairs_are_spread_over_prompts():
    from cwpo_jax.stages.movement import spread_over_prompts
    keys = ["a", "a", "a", "b", "c", "c"]
    assert spread_over_prompts(keys, 0) == list(range(6))
    assert spread_over_prompts(keys, 6) == list(range(6))
    assert spread_over_prompts(keys, 3) == [0, 3, 4]  # each prompt's first pair
    assert spread_over_prompts(keys, 5) == [0, 1, 3, 4, 5]  # then the second ones, in order


def test_kl_rows_hold_every_nonempty_sample_and_an_empty_second_response():
    from cwpo_jax.stages.movement import _sample_pairs
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}],
               [{"role": "user", "content": "c"}]]
    texts = ["a0", "a1", "", "b1", "c0", "c1"]  # two samples per prompt, prompt-major
    pairs, rows = _sample_pairs(prompts, texts, 2)
    assert [(p.prompt[0]["content"], p.chosen, p.rejected) for p in pairs] == [
        ("a", "a0", ""), ("a", "a1", ""), ("b", "b1", ""), ("c", "c0", ""), ("c", "c1", "")]
    assert rows == [0, 1, 3, 4, 5]  # the empty sample (prompt b's first) has no KL row
    assert len({p.id for p in pairs}) == 5
