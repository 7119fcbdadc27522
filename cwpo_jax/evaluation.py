"""Evaluation statistics in numpy: GRA with bootstrap intervals over prompts, t intervals over
seeds, label accuracy, calibration."""
from __future__ import annotations

import warnings

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
    return gra_of_win_rates(prompt_win_rates(gold_policy, gold_reference), seed=seed,
                            resamples=resamples)


def gra_of_win_rates(wins, *, seed: int = 0, resamples: int = 2000) -> dict:
    """gold_reward_accuracy from per-prompt win rates already computed (prompt_win_rates)."""
    gra, low, high = bootstrap_interval(wins, seed=seed, resamples=resamples)
    return {"gra": gra, "ci_low": low, "ci_high": high, "n": int(np.size(wins))}


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


def label_quality(train_a_wins, weights, keep, gold_a, gold_b) -> dict:
    """How good the labels a method trains on are, judged by gold, before any training.

    Per pair [N]: train_a_wins (the method trains response a over b), weights (its loss
    weight), keep (it trains on the pair at all), gold_a / gold_b (gold scores). Over kept pairs:
    gold_accuracy = share of gold-decided pairs labelled in the gold order; weighted_gold_accuracy
    = the same with the method's weights; tie_weight_share = share of the weight on gold ties
    (pairs with no right label). Accuracies are NaN when no kept pair is gold-decided."""
    keep = np.asarray(keep, bool)
    a_wins = np.asarray(train_a_wins, bool)[keep]
    w = np.asarray(weights, np.float64)[keep]
    ga, gb = np.asarray(gold_a, np.float64)[keep], np.asarray(gold_b, np.float64)[keep]
    decided = ga != gb
    correct = (a_wins == (ga > gb))[decided]
    w_decided = w[decided]
    return {"pairs": int(keep.sum()),
            "gold_accuracy": float(correct.mean()) if correct.size else float("nan"),
            "weighted_gold_accuracy": (float((w_decided * correct).sum() / w_decided.sum())
                                       if w_decided.sum() > 0 else float("nan")),
            "tie_weight_share": float(w[~decided].sum() / w.sum()) if w.sum() > 0 else 0.0}


def implicit_reward_accuracy(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> float:
    """Share of pairs whose implicit reward log pi - log pi_ref ranks chosen above rejected,
    ties half (an unmoved policy scores 0.5). All [N] summed log-probs."""
    margin = ((np.asarray(policy_chosen, np.float64) - np.asarray(ref_chosen, np.float64))
              - (np.asarray(policy_rejected, np.float64) - np.asarray(ref_rejected, np.float64)))
    if margin.size == 0:
        return float("nan")
    return float(np.mean(np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))))


def kl_estimate(policy_logps, reference_logps) -> float:
    """Monte-Carlo KL(pi || pi_ref) from responses sampled from pi: mean of log pi(y) -
    log pi_ref(y) (summed over each response's tokens). [N] each."""
    policy_logps = np.asarray(policy_logps, np.float64)
    reference_logps = np.asarray(reference_logps, np.float64)
    if policy_logps.shape != reference_logps.shape or policy_logps.ndim != 1:
        raise ValueError(f"need two [N] arrays, got {policy_logps.shape} and "
                         f"{reference_logps.shape}")
    return float(np.mean(policy_logps - reference_logps)) if policy_logps.size else float("nan")


def accuracy_by_decile(confidence, correct, *, bins: int = 10) -> list[dict]:
    """Accuracy of the weak labels per confidence quantile bin (deciles by default): rows of
    {c_low, c_high, count, mean_confidence, accuracy}, least confident first. Pairs with equal
    confidence stay in one bin, so a bin may be empty or larger than N / bins."""
    conf = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    if conf.shape != correct.shape or conf.ndim != 1:
        raise ValueError(f"need [N] confidence and correctness, got {conf.shape} and "
                         f"{correct.shape}")
    edges = np.quantile(conf, np.linspace(0, 1, bins + 1)) if conf.size else np.zeros(bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        rows.append({"c_low": float(edges[b]), "c_high": float(edges[b + 1]), "count": n,
                     "mean_confidence": float(conf[sel].mean()) if n else None,
                     "accuracy": float(correct[sel].mean()) if n else None})
    return rows


def correlation(x, y) -> float:
    """Pearson correlation of two [N] arrays; NaN when either is constant or N < 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def paired_difference(x, y, *, seed: int = 0, resamples: int = 2000, level: float = 0.95) -> dict:
    """mean(x) - mean(y) for per-unit values measured on the same units (prompts), with a paired
    bootstrap interval (units resampled together): BCa where it is defined, percentile otherwise
    (e.g. when every difference is equal). Returns {diff, ci_low, ci_high, n, interval}."""
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"need two [N] arrays over the same N >= 2 units, got {x.shape} and "
                         f"{y.shape}")
    diff = float(x.mean() - y.mean())
    for method in ("BCa", "percentile"):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap((x, y), lambda a, b, axis=-1: a.mean(axis) - b.mean(axis),
                                  paired=True, vectorized=True, n_resamples=resamples,
                                  confidence_level=level, method=method,
                                  rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return {"diff": diff, "ci_low": low, "ci_high": high, "n": int(x.size),
                    "interval": f"paired bootstrap ({method})"}
    return {"diff": diff, "ci_low": diff, "ci_high": diff, "n": int(x.size),
            "interval": "paired bootstrap (degenerate: every resample equal)"}


def hierarchical_bootstrap(groups, *, seed: int = 0, resamples: int = 4000,
                           level: float = 0.95) -> dict:
    """Mean over groups (seeds) of each group's mean over its units (prompts), with a
    two-stage percentile bootstrap interval that covers both noises: each resample draws the
    groups with replacement, then within each drawn group its units with replacement.
    groups: a list of non-empty [P_g] arrays (P_g may differ). Returns {mean, ci_low, ci_high,
    groups, sd_between, interval}; sd_between is the sd of the group means (None for one)."""
    groups = [np.asarray(g, np.float64) for g in groups]
    if not groups or any(g.ndim != 1 or g.size == 0 for g in groups):
        raise ValueError("need one or more non-empty [P] arrays, one per group")
    rng = np.random.default_rng(seed)
    s = len(groups)
    means = np.asarray([g.mean() for g in groups])
    picked = rng.integers(0, s, (resamples, s))
    # The mean of P draws from group g, for every (resample, position); a group drawn twice in
    # one resample gets two independent draws of its units.
    inner = np.empty((resamples, s))
    for g, values in enumerate(groups):
        at = picked == g
        count = int(at.sum())
        if count:
            draws = rng.integers(0, values.size, (count, values.size))
            inner[at] = values[draws].mean(axis=1)
    totals = inner.mean(axis=1)
    tail = (1 - level) / 2
    return {"mean": float(means.mean()), "ci_low": float(np.quantile(totals, tail)),
            "ci_high": float(np.quantile(totals, 1 - tail)), "groups": s,
            "sd_between": float(means.std(ddof=1)) if s > 1 else None,
            "interval": "hierarchical bootstrap (seeds, then prompts within seed)"}


def interpolation_matrix(x, at) -> np.ndarray:
    """[len(at), len(x)] coefficients c such that c @ y is the piecewise-linear interpolation
    through the points (x_i, y_i), taken in the order of x, at each value of `at`. x must be
    distinct and every value of `at` inside [min x, max x] (no extrapolation)."""
    x, at = np.asarray(x, np.float64), np.atleast_1d(np.asarray(at, np.float64))
    if x.ndim != 1 or x.size < 2 or np.unique(x).size != x.size or not np.isfinite(x).all():
        raise ValueError(f"need two or more distinct finite x, got {x.tolist()}")
    if at.min() < x.min() or at.max() > x.max():
        raise ValueError(f"interpolation points {at.min():g}..{at.max():g} outside the range "
                         f"{x.min():g}..{x.max():g}")
    order = np.argsort(x)
    out = np.zeros((at.size, x.size))
    for j, i in enumerate(order):
        unit = np.zeros(x.size)
        unit[j] = 1.0
        out[:, i] = np.interp(at, x[order], unit)
    return out


def shared_range(*xs) -> tuple[float, float] | None:
    """(low, high) of the x values every curve covers, or None when they do not overlap."""
    low, high = max(float(np.min(x)) for x in xs), min(float(np.max(x)) for x in xs)
    return (low, high) if low < high else None


def matched_contrast(kl_a, kl_b, *, points: int = 21):
    """Coefficients (c_a [n_a], c_b [n_b]) such that c_a @ gra_a - c_b @ gra_b is the mean
    difference between curve A and curve B (each GRA linear in KL between its points) over
    `points` evenly spaced KL values of the range both cover; a curve of one point is compared
    at its own KL, which must lie inside the other's range. None when there is no common KL.
    The contrast is linear in the GRAs, so applied to per-prompt win rates it gives per-prompt
    values whose mean is the matched-KL difference (the KL positions held fixed)."""
    kl_a, kl_b = np.atleast_1d(np.asarray(kl_a, np.float64)), np.atleast_1d(np.asarray(kl_b,
                                                                                  np.float64))
    if kl_a.size == 1 and kl_b.size == 1:
        return None
    if kl_a.size == 1 or kl_b.size == 1:
        single, curve = (kl_a, kl_b) if kl_a.size == 1 else (kl_b, kl_a)
        if not curve.min() <= single[0] <= curve.max():
            return None
        on_curve = interpolation_matrix(curve, single)[0]
        return (np.ones(1), on_curve) if kl_a.size == 1 else (on_curve, np.ones(1))
    span = shared_range(kl_a, kl_b)
    if span is None:
        return None
    at = np.linspace(span[0], span[1], points)
    return (interpolation_matrix(kl_a, at).mean(axis=0),
            interpolation_matrix(kl_b, at).mean(axis=0))
