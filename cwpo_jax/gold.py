"""Gold judges (rewards no trained model here sees) and simulated human raters.

A judge maps (prompt text, response text) lists to one float per response. The demo's default is
VADER sentiment (the policy should learn to answer more positively); `lexicon` is a dependency-
free word-count judge for the tiny synthetic pipeline; `reward_model:PATH` uses any reward model
checkpoint (the paper's setting, e.g. a Skywork or OpenAssistant RM where a hub is reachable).
"""
from __future__ import annotations

import hashlib
import re
from typing import Protocol, Sequence

import numpy as np

POSITIVE_WORDS = ("good", "great", "happy", "love", "wonderful", "kind", "glad", "nice", "best",
                  "thanks", "enjoy", "fun", "beautiful", "excellent", "friendly")
NEGATIVE_WORDS = ("bad", "sad", "hate", "awful", "terrible", "angry", "worst", "boring", "ugly",
                  "rude", "pain", "sorry", "wrong", "poor", "fear")


class GoldJudge(Protocol):
    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


class LexiconJudge:
    """(#positive words - #negative words) / sqrt(#words + 1): higher for friendlier answers."""

    name = "lexicon"

    def score(self, prompts, responses):
        out = []
        for text in responses:
            words = re.findall(r"[a-z']+", text.lower())
            pos = sum(w in POSITIVE_WORDS for w in words)
            neg = sum(w in NEGATIVE_WORDS for w in words)
            out.append((pos - neg) / np.sqrt(len(words) + 1.0))
        return np.asarray(out, np.float64)


class VaderJudge:
    """VADER compound sentiment of the response, in [-1, 1]."""

    name = "vader"

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts, responses):
        return np.asarray([self.analyzer.polarity_scores(r)["compound"] for r in responses],
                          np.float64)


def make_judge(name: str) -> GoldJudge:
    if name == "lexicon":
        return LexiconJudge()
    if name == "vader":
        return VaderJudge()
    if name.startswith("reward_model:"):
        from cwpo_jax.stages.reward_judge import RewardModelJudge

        return RewardModelJudge(name.split(":", 1)[1])
    raise ValueError(f"unknown gold judge {name!r}; expected 'vader', 'lexicon' or "
                     "'reward_model:PATH'")


def _uniform(pair_id: str, seed: int) -> float:
    """A uniform draw fixed by (pair id, seed): labels do not change when the file order does."""
    digest = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def simulate_human_labels(gold_a, gold_b, ids: Sequence[str], *, temperature: float,
                          seed: int) -> np.ndarray:
    """Noisy raters: a is preferred with probability sigmoid((gold_a - gold_b) / temperature)
    (Bradley-Terry on the gold scores). Returns bool [N], True where the rater picks a."""
    if temperature <= 0:
        raise ValueError(f"rater temperature must be > 0, got {temperature}")
    diff = (np.asarray(gold_a, np.float64) - np.asarray(gold_b, np.float64)) / temperature
    p_a = 1.0 / (1.0 + np.exp(-np.clip(diff, -500, 500)))
    draws = np.asarray([_uniform(i, seed) for i in ids])
    return draws < p_a


def rater_temperature(gold_a, gold_b, agreement: float) -> float:
    """The rater temperature T at which Bradley-Terry raters agree with the gold order on
    `agreement` of the gold-decided pairs in expectation: mean(sigmoid(|gap| / T)) = agreement,
    solved by bisection on log T (the mean falls monotonically from 1 to 0.5 as T grows)."""
    gaps = np.abs(np.asarray(gold_a, np.float64) - np.asarray(gold_b, np.float64))
    gaps = gaps[gaps > 0]
    if gaps.size == 0 or not 0.5 < agreement < 1.0:
        raise ValueError(f"need gold-decided pairs and an agreement in (0.5, 1), got "
                         f"{gaps.size} pairs and {agreement}")

    def mean_agreement(t):
        return float(np.mean(1.0 / (1.0 + np.exp(-gaps / t))))

    lo, hi = np.log(gaps.min() * 1e-3), np.log(gaps.max() * 1e3)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_agreement(np.exp(mid)) > agreement else (lo, mid)
    return float(np.exp((lo + hi) / 2))
