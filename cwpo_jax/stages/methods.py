"""The alignment methods: one table entry per method, read by config validation and by align.

A method says whose order each pool pair is trained in, with what weight, which pairs it keeps,
and from which share of the pool. Adding a method is one entry here plus a test; the pure math
behind weak labels and confidences stays in cwpo_jax/confidence.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cwpo_jax import confidence

LABELS = ("human", "weak", "gold")  # stored (human) order, the annotator's, the gold judge's
# confidence: align.confidence of the annotator's margin; gold_confidence: C1 of the gold gap at
# the raters' temperature (data.rater_temperature)
WEIGHTINGS = ("one", "confidence", "gold_confidence")
# top_fraction: the align.top_fraction largest annotator margins; gold_top_fraction: the
# align.top_fraction largest gold gaps (gold ties never kept)
KEEPS = ("all", "top_fraction", "gold_decided", "gold_top_fraction")
POOLS = ("unlabelled", "all")  # all: the labelled share (the annotator's pairs) as well


@dataclass(frozen=True)
class Method:
    labels: str
    weighting: str = "one"
    keep: str = "all"
    pool: str = "unlabelled"
    about: str = ""

    @property
    def needs_gold(self) -> bool:
        return (self.labels == "gold" or self.keep in ("gold_decided", "gold_top_fraction")
                or self.weighting == "gold_confidence")

    @property
    def needs_scores(self) -> bool:
        return (self.labels == "weak" or self.weighting == "confidence"
                or self.keep == "top_fraction")


METHODS = {
    "human": Method("human", about="human labels of the unlabelled share (the paper's Human)"),
    "human_all": Method("human", pool="all",
                        about="human labels of labelled + unlabelled pairs (Human 100%)"),
    "weak": Method("weak", about="weak labels, weight 1 (WS-DPO)"),
    "weak_confidence": Method("weak", weighting="confidence",
                              about="weak labels, weight = confidence (CW-PO)"),
    "top_fraction": Method("weak", keep="top_fraction",
                           about="weak labels, only the align.top_fraction most confident pairs"),
    # What exact labels teach, and the check that the student can learn the gold preference.
    "gold": Method("gold", keep="gold_decided",
                   about="the gold judge's order, gold ties dropped (controlled settings only)"),
    # Oracles of CW's weighting and of top_fraction's filtering: what these pairs can teach
    # with perfect labels and the best weights or subset the gold gap gives.
    "gold_weighted": Method("gold", weighting="gold_confidence", keep="gold_decided",
                            about="the gold order, weight 2 sigmoid(|gold gap| / T) - 1 at the "
                                  "raters' temperature T"),
    "gold_top_fraction": Method("gold", keep="gold_top_fraction",
                                about="the gold order, only the align.top_fraction largest "
                                      "gold gaps"),
}

# Paired comparisons evaluation reports when both methods ran: (A, B) gives GRA(A) - GRA(B).
DIFFERENCES = (("weak_confidence", "human"), ("weak_confidence", "weak"),
               ("top_fraction", "weak"), ("human_all", "human"), ("gold", "human"),
               ("weak_confidence", "gold_weighted"), ("top_fraction", "gold_top_fraction"))


def targets(method: Method, n: int, *, score_a=None, score_b=None, gold=None, kind: str = "c1",
            tau: float = 1.0, fraction: float = 1.0, rater_temperature: float | None = None):
    """(swap [n], weight [n], keep [n]) of n pairs stored in human order under `method`.
    score_a/score_b: annotator scores of the stored (chosen, rejected), when needs_scores;
    gold: [n, 2] gold scores of (chosen, rejected), when needs_gold; rater_temperature: the
    simulated raters' T, for the gold_confidence weighting."""
    swap = np.zeros(n, bool)
    weight = np.ones(n, np.float32)
    keep = np.ones(n, bool)
    if method.needs_scores:
        score_a, score_b = np.asarray(score_a), np.asarray(score_b)
    if method.labels == "weak":
        swap = ~np.asarray(confidence.weak_labels(score_a, score_b))
    elif method.labels == "gold":
        swap = gold[:, 0] < gold[:, 1]
    if method.weighting == "confidence":
        weight = np.asarray(confidence.confidence(score_a, score_b, kind=kind, tau=tau)
                            .astype(np.float32))
    elif method.weighting == "gold_confidence":
        if rater_temperature is None:
            raise ValueError("the gold_confidence weighting needs the raters' temperature")
        weight = np.asarray(confidence.rater_confidence(gold[:, 0], gold[:, 1],
                                                        rater_temperature), np.float32)
    if method.keep == "top_fraction":
        keep = np.asarray(confidence.top_fraction_mask(confidence.margin(score_a, score_b),
                                                       fraction))
    elif method.keep == "gold_decided":
        keep = gold[:, 0] != gold[:, 1]
    elif method.keep == "gold_top_fraction":
        keep = (np.asarray(confidence.top_fraction_mask(confidence.margin(gold[:, 0], gold[:, 1]),
                                                        fraction))
                & (gold[:, 0] != gold[:, 1]))
    return swap, weight, keep
