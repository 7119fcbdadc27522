"""Degeneration metrics and the gate on hand-made samples: a repeated word, words run
together, a fluent sentence."""
import numpy as np
import pytest

from cwpo_jax import degeneration as dg
from cwpo_jax.evaluation import prompt_win_rates

FLUENT = "I am happy to help you with that, just tell me what you need."
REPEATED = "good good good good good good good good"
RUN_TOGETHER = "Iamhappytohelp with kindsmattering"
VOCAB = dg.build_vocabulary(["I am happy to help you with that.", "Just tell me what you need",
                             "good things", "kindness matters a lot"])
POSITIVE = {"good", "happy", "help"}


def test_fluent_sentence():
    m = dg.sample_metrics([FLUENT], VOCAB, POSITIVE)
    assert m["length"][0] == 14
    assert m["repeat_rate"][0] == pytest.approx(1 / 14)  # the second "you"
    assert m["nonword_share"][0] == 0.0
    assert m["positive_density"][0] == pytest.approx(2 / 14)


def test_repeated_word():
    m = dg.sample_metrics([REPEATED], VOCAB, POSITIVE)
    assert m["length"][0] == 8
    assert m["repeat_rate"][0] == pytest.approx(7 / 8)  # every token after the first
    assert m["nonword_share"][0] == 0.0 and m["positive_density"][0] == 1.0
    assert dg.distinct_n([REPEATED], 1) == pytest.approx(1 / 8)
    assert dg.distinct_n([REPEATED], 2) == pytest.approx(1 / 7)


def test_run_together_words():
    m = dg.sample_metrics([RUN_TOGETHER], VOCAB, POSITIVE)
    assert m["length"][0] == 3
    assert m["nonword_share"][0] == pytest.approx(2 / 3)  # "with" is a word
    assert m["repeat_rate"][0] == 0.0
    # A token longer than MAX_WORD_LETTERS is a non-word even when the vocabulary holds it.
    long_token = "a" * (dg.MAX_WORD_LETTERS + 1)
    assert long_token not in dg.build_vocabulary([long_token])
    assert dg.nonword_share(long_token, VOCAB | {long_token}) == 1.0


def test_repeat_window_and_empty_text():
    tokens = ["a"] + [f"w{i}" for i in range(dg.REPEAT_WINDOW)] + ["a"]
    assert dg.repeat_rate(tokens) == 0.0  # the second "a" is beyond the window
    inside = ["a"] + [f"w{i}" for i in range(dg.REPEAT_WINDOW - 1)] + ["a"]
    assert dg.repeat_rate(inside) == pytest.approx(1 / len(inside))  # the window's edge
    m = dg.sample_metrics([""], VOCAB, POSITIVE)
    assert (m["length"][0], m["repeat_rate"][0], m["nonword_share"][0]) == (0, 0, 0)
    assert np.isnan(dg.distinct_n(["", "one"], 2))


def test_corpus_distinct_counts_ngrams_across_samples():
    assert dg.distinct_n(["a b", "a c"], 1) == pytest.approx(3 / 4)
    assert dg.distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)


def test_gate_from_reference_quantiles_flags_the_degenerate_samples():
    reference = {"nll": np.array([2.0, 2.5, 3.0, np.nan]),
                 "repeat_rate": np.array([0.0, 0.1, 0.2, 0.0]),
                 "nonword_share": np.array([0.0, 0.0, 0.1, 0.0]),
                 "length": np.array([10.0, 12.0, 14.0, 0.0])}
    t = dg.gate_thresholds(reference, quantile=0.99)
    # fewer than 100 samples: the thresholds are their extremes (NaN left out)
    assert (t["nll"], t["repeat_rate"], t["nonword_share"], t["length"]) == (3.0, 0.2, 0.1, 0.0)
    many = {k: np.arange(200.0) for k in reference}
    high = dg.gate_thresholds(many)
    assert high["nll"] == 198.0 and high["length"] == 1.0  # one reference sample beyond each
    assert dg.degenerate(many, high).sum() == 2
    texts = [FLUENT, REPEATED, RUN_TOGETHER]
    m = dg.sample_metrics(texts, VOCAB, POSITIVE)
    m["nll"] = np.array([2.2, 1.0, np.nan])
    flags = dg.degenerate(m, t)
    assert flags.tolist() == [False, True, True]
    s = dg.summary(texts, m, flags)
    assert s["degenerate_share"] == pytest.approx(2 / 3) and s["nll"] == pytest.approx(1.6)
    with pytest.raises(ValueError, match="quantile"):
        dg.gate_thresholds(reference, quantile=1.0)


def test_gated_scores_make_a_degenerate_sample_the_worst():
    # The repeated word scores highest by the judge but is degenerate: it loses to every
    # reference sample, and ties with a degenerate reference sample.
    policy = dg.gated_scores([0.97, 0.1], [True, False])
    reference = dg.gated_scores([-0.5, 0.3], [False, True])
    wins = prompt_win_rates(policy, reference)
    assert wins.tolist() == [0.0, 1.0]
    both = prompt_win_rates(dg.gated_scores([0.9], [True]), dg.gated_scores([0.1], [True]))
    assert both.tolist() == [0.5]
