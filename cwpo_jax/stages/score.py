"""Stage 2, score: the frozen annotator labels the unlabelled share (a separate jitted pass).

Writes score/scores.jsonl (id, score_a, score_b, weak label, c1/c2/c3; a = stored chosen) with
the annotator's identity (a hash of its checkpoint), and reports the annotator's accuracy and
calibration against the hidden human labels (and the gold judge in controlled settings).
"""
from __future__ import annotations

import time

import jax
import numpy as np

from cwpo_jax import confidence, models, scores
from cwpo_jax.evaluation import accuracy_by_decile, correlation, label_accuracy, reliability_table
from cwpo_jax.stages import common, run_folder
from cwpo_jax.stages.pair_passes import score_pairs
from cwpo_jax.stages.run_folder import annotator_identity, scores_path
from cwpo_jax.train.hosts import log

STAGE = "score"


def gold_diagnostics(cfg, ids, gold, score_a, score_b, conf) -> dict:
    """Whether the annotator's confidence tracks the gold preference: correlation of C1 with
    the gold gap |gold a - gold b| (ties included, gap 0), gold accuracy of the
    align.top_fraction most confident labels and per confidence decile (gold-decided pairs).
    conf: C1 of every pair [N]."""
    gap = np.asarray([abs(gold[i][0] - gold[i][1]) for i in ids], np.float64)
    gold_a = np.asarray([gold[i][0] > gold[i][1] for i in ids])
    decided = gap > 0
    correct = (score_a >= score_b) == gold_a
    top = np.asarray(confidence.top_fraction_mask(np.abs(score_a - score_b),
                                                  cfg.align.top_fraction)) & decided
    return {"gold_gap_correlation": correlation(conf, gap),
            "top_fraction_gold_accuracy": label_accuracy(correct[top], np.ones(top.sum(), bool)),
            "top_fraction": cfg.align.top_fraction,
            "accuracy_by_decile_vs_gold": accuracy_by_decile(conf[decided], correct[decided])}


@run_folder.stage(STAGE, "scores exist")
def run(cfg) -> dict:
    model_dir = run_folder.path(cfg, "annotator", "model")
    tok = models.load_tokenizer(model_dir)
    rm = models.reward_model_from_pretrained(model_dir)
    pairs = run_folder.load_split(cfg, "unlabelled")
    tokenized = common.pair_store(cfg, common.pair_tokenizer(cfg, tok), pairs)
    start = time.perf_counter()
    score_a, score_b = score_pairs(cfg, rm, tokenized, tok, STAGE)
    seconds = time.perf_counter() - start
    ids = [p.id for p in pairs]
    identity = annotator_identity(cfg)
    if jax.process_index() == 0:
        scores.write_scores(scores_path(cfg), ids, score_a, score_b, annotator=identity,
                            tau=cfg.score.tau)
    weak_a = score_a >= score_b
    conf = np.asarray(confidence.confidence(score_a, score_b, kind="c1"), np.float64)
    summary = {"annotator": identity, "pairs": len(ids), "pairs_per_s": len(ids) / seconds,
               "accuracy_vs_human": label_accuracy(weak_a, np.ones(len(ids), bool)),
               "mean_confidence": float(conf.mean())}
    summary["calibration_vs_human"], summary["ece_vs_human"] = reliability_table(conf, weak_a)
    gold = run_folder.load_gold(cfg)
    if gold is not None:
        # Gold ties (e.g. two VADER-neutral answers) have no right label: left out here.
        decided = np.asarray([gold[i][0] != gold[i][1] for i in ids])
        gold_a = np.asarray([gold[i][0] > gold[i][1] for i in ids])
        summary["gold_decided_pairs"] = int(decided.sum())
        summary["accuracy_vs_gold"] = label_accuracy(weak_a[decided], gold_a[decided])
        summary["human_vs_gold"] = label_accuracy(np.ones(int(decided.sum()), bool),
                                                  gold_a[decided])
        summary["calibration_vs_gold"], summary["ece_vs_gold"] = reliability_table(
            conf[decided], weak_a[decided] == gold_a[decided])
        summary.update(gold_diagnostics(cfg, ids, gold, score_a, score_b, conf))
    log(STAGE, f"{len(ids)} pairs at {summary['pairs_per_s']:.1f} pairs/s; accuracy vs "
               f"human {summary['accuracy_vs_human']:.1%}" + (
                   f", vs gold {summary['accuracy_vs_gold']:.1%} (top "
                   f"{cfg.align.top_fraction:.0%}: {summary['top_fraction_gold_accuracy']:.1%}"
                   f"; C1 vs gold gap r = {summary['gold_gap_correlation']:.2f})"
                   if gold else ""))
    return summary
