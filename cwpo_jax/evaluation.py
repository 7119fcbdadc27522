"""Evaluation statistics in numpy: GRA with bootstrap intervals, label accuracy, calibration."""
from __future__ import annotations

import numpy as np


def win_indicators(gold_policy, gold_reference) -> np.ndarray:
    """Per prompt: 1 if the policy's response scores higher, 0 if lower, 0.5 on a tie."""
    a, b = np.asarray(gold_policy, np.float64), np.asarray(gold_reference, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"gold scores must be [N] of equal length, got {a.shape} and {b.shape}")
    return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))


def bootstrap_interval(values, *, seed: int = 0, resamples: int = 2000, level: float = 0.95):
    """(mean, low, high): percentile bootstrap interval of the mean of `values`."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, (resamples, values.size))
    means = values[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(values.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def gold_reward_accuracy(gold_policy, gold_reference, *, seed: int = 0, resamples: int = 2000):
    """GRA: share of prompts where the gold judge prefers the aligned policy over the reference,
    with a 95% bootstrap interval. Returns {"gra", "ci_low", "ci_high", "n"}."""
    wins = win_indicators(gold_policy, gold_reference)
    gra, low, high = bootstrap_interval(wins, seed=seed, resamples=resamples)
    return {"gra": gra, "ci_low": low, "ci_high": high, "n": int(wins.size)}


def label_accuracy(predicted_a_wins, true_a_wins) -> float:
    p, t = np.asarray(predicted_a_wins, bool), np.asarray(true_a_wins, bool)
    if p.shape != t.shape:
        raise ValueError(f"label arrays differ in shape: {p.shape} vs {t.shape}")
    return float((p == t).mean()) if p.size else float("nan")


def reliability_table(confidence, correct, *, bins: int = 10):
    """Calibration of the annotator's confidence in its own labels.

    The weak label's probability of being right, as the Bradley-Terry model states it, is
    p = sigmoid(|delta|) = (1 + C1) / 2 in [0.5, 1). Bins over p; each row: p range, count, mean
    p, observed accuracy. Returns (rows, expected calibration error)."""
    conf = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    p = (1.0 + conf) / 2.0
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        row = {"p_low": float(edges[b]), "p_high": float(edges[b + 1]), "count": n,
               "mean_p": float(p[sel].mean()) if n else None,
               "accuracy": float(correct[sel].mean()) if n else None}
        if n:
            ece += n / p.size * abs(row["mean_p"] - row["accuracy"])
        rows.append(row)
    return rows, float(ece)
