"""Weak-annotator scores -> weak labels, confidences and per-pair alignment targets. Pure.

Imports only jax and numpy. Scores come from the frozen weak reward model: score_a = r(x, y_a),
score_b = r(x, y_b), each [N]. In the alignment data a pair is stored in its human label's order
(a = human-chosen, b = human-rejected), so "swap" below means "the weak annotator disagrees".
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

CONFIDENCE_KINDS = ("c1", "c2", "c3")
LABEL_SOURCES = ("human", "weak", "weak_confidence", "top_fraction")


def weak_labels(score_a: ArrayLike, score_b: ArrayLike) -> jax.Array:
    """True where the annotator prefers response a: score_a >= score_b (ties go to a). [N] bool."""
    return jnp.asarray(score_a) >= jnp.asarray(score_b)


def confidence(score_a: ArrayLike, score_b: ArrayLike, *, kind: str = "c1",
               tau: float = 1.0) -> jax.Array:
    """Annotator confidence in its own label, [N] in [0, 1], with d = |score_a - score_b|:

    c1 = 2 * sigmoid(d) - 1 = tanh(d / 2)   (paper Eq. 8, the default; 0 for a tie)
    c2 = sigmoid(d)                          (in [0.5, 1))
    c3 = min(d / tau, 1)                     (clipped raw margin; tau > 0 the saturation margin)

    Computed in float32 at least; finite for any finite d (tanh and sigmoid saturate at 1).
    """
    if kind not in CONFIDENCE_KINDS:
        raise ValueError(f"unknown confidence kind {kind!r}; expected one of {CONFIDENCE_KINDS}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    a = jnp.asarray(score_a)
    a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    d = jnp.abs(a - jnp.asarray(score_b, a.dtype))
    if kind == "c1":
        return jnp.tanh(d / 2.0)
    if kind == "c2":
        return jax.nn.sigmoid(d)
    return jnp.minimum(d / tau, 1.0)


def rater_confidence(gold_a: ArrayLike, gold_b: ArrayLike, temperature: float) -> jax.Array:
    """2 * sigmoid(|gold_a - gold_b| / T) - 1 = tanh(|gap| / (2 T)), [N] in [0, 1): C1 of the
    gold gap at the raters' temperature T (gold.simulate_human_labels), i.e. how much more
    often than a coin the simulated raters agree with the gold order on the pair; 0 for a tie."""
    if not temperature > 0:
        raise ValueError(f"rater temperature must be > 0, got {temperature}")
    gap = jnp.abs(jnp.asarray(gold_a, jnp.float32) - jnp.asarray(gold_b, jnp.float32))
    return jnp.tanh(gap / (2.0 * temperature))


def margin(score_a, score_b):
    """|score_a - score_b| in float32, [N]: what top-fraction filtering ranks by. Every
    confidence kind is monotone in it, and c1/c2 saturate to 1.0 in float32 for large margins,
    which would turn real differences into ties."""
    return jnp.abs(jnp.asarray(score_a, jnp.float32) - jnp.asarray(score_b, jnp.float32))


def top_fraction_count(n: int, fraction: float) -> int:
    """ceil(fraction * n), robust to float error (0.3 * 10 is 3, not 4)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(n, math.ceil(round(fraction * n, 9)))


def top_fraction_mask(conf: ArrayLike, fraction: float) -> jax.Array:
    """Mask of the ceil(fraction * N) most confident pairs, [N] bool.

    Ties are broken by position (earlier pair first), so the result is deterministic.
    `fraction` is a Python float (static under jit).
    """
    conf = jnp.asarray(conf)
    n = conf.shape[0]
    k = top_fraction_count(n, fraction)
    order = jnp.argsort(-conf, stable=True)
    ranks = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return ranks < k


class PairTargets(NamedTuple):
    """What the alignment stage trains on, per pair [N]:
    swap   bool: train on (b, a) instead of the stored (a, b) order;
    weight float32: the per-pair loss weight;
    keep   bool: whether the pair is used at all (False only for top-fraction filtering)."""

    swap: jax.Array
    weight: jax.Array
    keep: jax.Array


def pair_targets(
    source: str, *, n: int | None = None, score_a: ArrayLike | None = None,
    score_b: ArrayLike | None = None, kind: str = "c1", tau: float = 1.0,
    fraction: float | None = None,
) -> PairTargets:
    """Turn a label source into (order, weight, keep) for the alignment stage.

    source:
      "human"            stored human order, weight 1 (the Human baseline; needs n only)
      "weak"             weak labels, weight 1 (WS-DPO)
      "weak_confidence"  weak labels, weight = confidence(kind, tau) (CW-PO)
      "top_fraction"     weak labels, weight 1, keep the `fraction` largest margins (filtering)
    score_a, score_b [N]: annotator scores of the stored (human-chosen, human-rejected) responses.
    """
    if source not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {source!r}; expected one of {LABEL_SOURCES}")
    if source == "human":
        if n is None:
            if score_a is None:
                raise ValueError("label source 'human' needs n (or scores to take N from)")
            n = jnp.shape(score_a)[0]
        return PairTargets(
            swap=jnp.zeros((n,), bool), weight=jnp.ones((n,), jnp.float32), keep=jnp.ones((n,), bool)
        )
    if score_a is None or score_b is None:
        raise ValueError(f"label source {source!r} needs score_a and score_b")
    if jnp.shape(score_a) != jnp.shape(score_b) or jnp.ndim(score_a) != 1:
        raise ValueError(
            f"score_a and score_b must be [N] of equal length, got {jnp.shape(score_a)} and "
            f"{jnp.shape(score_b)}"
        )
    n = jnp.shape(score_a)[0]
    swap = ~weak_labels(score_a, score_b)
    ones = jnp.ones((n,), jnp.float32)
    if source == "weak":
        return PairTargets(swap=swap, weight=ones, keep=jnp.ones((n,), bool))
    if source == "weak_confidence":
        conf = confidence(score_a, score_b, kind=kind, tau=tau).astype(jnp.float32)
        return PairTargets(swap=swap, weight=conf, keep=jnp.ones((n,), bool))
    if fraction is None:
        raise ValueError("label source 'top_fraction' needs fraction")
    return PairTargets(swap=swap, weight=ones,
                       keep=top_fraction_mask(margin(score_a, score_b), fraction))
