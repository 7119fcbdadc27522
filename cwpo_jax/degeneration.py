"""Degeneration metrics of sampled responses, and the gate that turns them into gated GRA. Pure
(numpy and re); the per-token NLL under the reference comes from a log-prob pass elsewhere
(stages/movement.py).

A judge that scores sentiment can be pleased by text that is no longer language: "good good good
good" or words run together ("Iamhappytohelp"). Per sample:
  length            word tokens (lower-cased runs of letters, digits and inner apostrophes);
  repeat_rate       share of its word tokens equal to one of the REPEAT_WINDOW tokens before
                    them (Welleck et al. 2020's rep/l);
  nonword_share     share of its alphabetic tokens that are not in a vocabulary built offline
                    (from the pool and the prompt corpus, never from a policy's samples) or are
                    longer than MAX_WORD_LETTERS letters (run-together words);
  positive_density  share of its word tokens in a positive lexicon (the judge's own words where
                    it has them): how much of the text is the cue the judge rewards;
  nll               per-token negative log-likelihood under the reference model.
Over a model's samples: distinct-1/2 (unique n-grams over all n-grams of all its samples).

The gate: thresholds fixed once from the reference model's own samples (GATE: the GATE_QUANTILE
quantile on the side where a value is bad), before any policy is compared; a sample beyond any
threshold is degenerate and counts as the worst sample in gated GRA (gated_scores). Positive
density is reported but not gated: a higher share of positive words is what the judge is meant
to reward, so gating on it would gate the effect being measured.
"""
from __future__ import annotations

import re

import numpy as np

WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
ALPHABETIC = re.compile(r"[a-z]+(?:'[a-z]+)*")
# Longer alphabetic tokens are non-words even when the vocabulary holds them ("responsibilities"
# has 16 letters); shorter run-together tokens count when the vocabulary lacks them.
MAX_WORD_LETTERS = 16
REPEAT_WINDOW = 8
GATE_QUANTILE = 0.99
# metric -> the side on which a value is degenerate (beyond the reference's quantile)
GATE = {"nll": "high", "repeat_rate": "high", "nonword_share": "high", "length": "low"}
SAMPLE_METRICS = ("length", "repeat_rate", "nonword_share", "positive_density")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def build_vocabulary(texts) -> frozenset:
    """The alphabetic tokens of `texts` with at most MAX_WORD_LETTERS letters."""
    vocab = set()
    for text in texts:
        vocab.update(w for w in ALPHABETIC.findall(text.lower())
                     if len(w.replace("'", "")) <= MAX_WORD_LETTERS)
    return frozenset(vocab)


def repeat_rate(tokens: list[str], window: int = REPEAT_WINDOW) -> float:
    """Share of tokens equal to one of the `window` tokens before them; 0 for no tokens."""
    if not tokens:
        return 0.0
    return sum(t in tokens[max(0, i - window):i] for i, t in enumerate(tokens)) / len(tokens)


def nonword_share(text: str, vocabulary) -> float:
    """Share of the alphabetic tokens not in `vocabulary` or longer than MAX_WORD_LETTERS
    letters; 0 for a text without any."""
    alpha = ALPHABETIC.findall(text.lower())
    if not alpha:
        return 0.0
    return sum(w not in vocabulary or len(w.replace("'", "")) > MAX_WORD_LETTERS
               for w in alpha) / len(alpha)


def positive_density(tokens: list[str], positive_words) -> float:
    return sum(t in positive_words for t in tokens) / len(tokens) if tokens else 0.0


def sample_metrics(texts, vocabulary, positive_words) -> dict[str, np.ndarray]:
    """{SAMPLE_METRICS name: [N]} of N texts."""
    out = {name: [] for name in SAMPLE_METRICS}
    for text in texts:
        tokens = words(text)
        out["length"].append(len(tokens))
        out["repeat_rate"].append(repeat_rate(tokens))
        out["nonword_share"].append(nonword_share(text, vocabulary))
        out["positive_density"].append(positive_density(tokens, positive_words))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def distinct_n(texts, n: int) -> float:
    """Unique n-grams over all n-grams of every text (n-grams do not cross texts); NaN when
    the texts have none."""
    grams = [tuple(t[i:i + n]) for t in map(words, texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def gate_thresholds(reference: dict[str, np.ndarray], quantile: float = GATE_QUANTILE) -> dict:
    """{metric: threshold} for GATE from the reference's per-sample metrics: the `quantile`
    quantile for "high" metrics, the 1 - quantile quantile for "low" ones, each taken at a
    reference value (the next one outwards, not interpolated), so at most about 1 - quantile of
    the reference's own samples lie beyond it (none with fewer than 1 / (1 - quantile)
    samples: the threshold is then their extreme). NaN values (the NLL of an empty sample) are
    left out."""
    if not 0.5 < quantile < 1.0:
        raise ValueError(f"gate quantile must be in (0.5, 1), got {quantile}")
    out = {}
    for name, side in GATE.items():
        values = np.asarray(reference[name], np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError(f"no finite reference values of {name!r} to fix its threshold on")
        out[name] = float(np.quantile(values, quantile, method="higher") if side == "high" else
                          np.quantile(values, 1.0 - quantile, method="lower"))
    return out


def degenerate(metrics: dict[str, np.ndarray], thresholds: dict) -> np.ndarray:
    """[N] bool: beyond any threshold (strictly; NaN never counts)."""
    flags = None
    for name, side in GATE.items():
        v = np.asarray(metrics[name], np.float64)
        with np.errstate(invalid="ignore"):
            beyond = v > thresholds[name] if side == "high" else v < thresholds[name]
        flags = beyond if flags is None else flags | beyond
    return flags


def gated_scores(gold, flags) -> np.ndarray:
    """Gold scores with every degenerate sample at -inf: it loses to any other sample and
    ties with another degenerate one."""
    return np.where(np.asarray(flags, bool), -np.inf, np.asarray(gold, np.float64))


def summary(texts, metrics: dict[str, np.ndarray], flags) -> dict:
    """A model's means over its samples, distinct-1/2 over all of them, degenerate share."""
    out = {name: float(np.nanmean(v)) if np.isfinite(v).any() else None
           for name, v in metrics.items()}
    out["distinct_1"], out["distinct_2"] = distinct_n(texts, 1), distinct_n(texts, 2)
    out["degenerate_share"] = float(np.mean(flags)) if len(flags) else None
    return out
