"""Gold judges (rewards no trained model here sees) and simulated human raters.

A judge maps (prompt text, response text) lists to one float per response. The demo's default is
VADER sentiment (the policy should learn to answer more positively); `lexicon` is a dependency-
free word-count judge for the tiny synthetic pipeline; `reward_model:PATH` uses any reward model
checkpoint (the paper's setting, e.g. a Skywork or OpenAssistant RM where a hub is reachable).
"""
from __future__ import annotations

import functools
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


class RewardModelJudge:
    """A reward-model checkpoint as the judge (the paper's evaluation: e.g. Skywork or
    OpenAssistant reward models, wherever a hub or a local copy is available). Its imports
    wait until one is made: the word judges need neither models nor jax."""

    def __init__(self, path: str, *, batch_size: int = 8, max_prompt_len: int = 512,
                 max_len: int = 1024):
        from cwpo_jax import models, sharding
        from cwpo_jax.data.tokenize import PairTokenizer

        self.name = f"reward_model:{path}"
        self.tokenizer = models.load_tokenizer(path)
        self.model = models.reward_model_from_pretrained(path)
        self.encode = PairTokenizer(self.tokenizer, max_prompt_len=max_prompt_len,
                                    max_len=max_len)
        self.batch_size, self.max_len = batch_size, max_len
        self.mesh = sharding.make_mesh(1, 1, 1)  # one device: batches of a few sequences

    def score(self, prompts, responses) -> np.ndarray:
        from cwpo_jax.data.batching import collate_sequences, default_buckets
        from cwpo_jax.data.tokenize import pad_id
        from cwpo_jax.train.passes import batched_pass

        items = self.encode.encode_sequences([[{"role": "user", "content": p}] for p in prompts],
                                             list(responses))
        collate = functools.partial(collate_sequences, items, batch_size=self.batch_size,
                                    buckets=default_buckets(self.max_len),
                                    pad_id=pad_id(self.tokenizer))
        out = np.full(len(items), np.nan)
        for batch, scores in batched_pass(self.model, _reward_scores,
                                          lengths=[s.length for s in items], collate=collate,
                                          batch_size=self.batch_size, mesh=self.mesh,
                                          name="gold/" + self.name):
            for row, i in enumerate(batch["index"]):
                if i >= 0:
                    out[i] = scores[row]
        return out


def _reward_scores(model, batch):
    return model(batch["input_ids"], batch["attention_mask"])


def make_judge(name: str) -> GoldJudge:
    if name == "lexicon":
        return LexiconJudge()
    if name == "vader":
        return VaderJudge()
    if name.startswith("reward_model:"):
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
