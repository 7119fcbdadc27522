"""Evaluation statistics in numpy: GRA with bootstrap intervals over prompts, t intervals over
seeds, label accuracy, calibration."""
from __future__ import annotations

import numpy as np


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


def prompt_win_rates(gold_policy, gold_reference) -> np.ndarray:
    """Per prompt: the share of (policy sample, reference sample) comparisons the policy wins,
    ties half. Inputs are [P] (one sample per prompt) or [P, k] (k samples per prompt; the two
    sides may have different k); every policy sample meets every reference sample."""
    a, b = np.asarray(gold_policy, np.float64), np.asarray(gold_reference, np.float64)
    a, b = (a[:, None] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0] or 0 in a.shape + b.shape:
        raise ValueError(f"gold scores must be [P] or [P, k] with the same P and k > 0, got "
                         f"{np.shape(gold_policy)} and {np.shape(gold_reference)}")
    x, y = a[:, :, None], b[:, None, :]
    return np.where(x > y, 1.0, np.where(x < y, 0.0, 0.5)).mean(axis=(1, 2))


def gold_reward_accuracy(gold_policy, gold_reference, *, seed: int = 0, resamples: int = 2000):
    """GRA: share of comparisons where the gold judge prefers the aligned policy's response over
    the reference's, averaged per prompt first (prompt_win_rates), with a 95% bootstrap interval
    that resamples prompts: the k samples of one prompt are not independent of each other.
    Returns {"gra", "ci_low", "ci_high", "n" (prompts)}."""
    wins = prompt_win_rates(gold_policy, gold_reference)
    gra, low, high = bootstrap_interval(wins, seed=seed, resamples=resamples)
    return {"gra": gra, "ci_low": low, "ci_high": high, "n": int(wins.size)}


def seed_interval(values, *, level: float = 0.95) -> dict:
    """Mean over independent runs (seeds) with the sample standard deviation and a Student-t
    interval of the mean (n - 1 degrees of freedom); sd and interval are None for one run."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty [n] array of per-run values, got {values.shape}")
    mean, n = float(values.mean()), int(values.size)
    if n == 1:
        return {"mean": mean, "sd": None, "ci_low": None, "ci_high": None, "n": n}
    from scipy import stats

    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
    return {"mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "n": n}


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
