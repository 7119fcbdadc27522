"""Stage 1, train_annotator: the weak reward model, Bradley-Terry loss on the labelled share.

Any backbone with a scalar head (`reward_model_from_pretrained`); full fine-tuning as in the
paper, or the head alone on a frozen backbone (annotator.train_backbone=False). Logs accuracy
against human labels on the held-out eval pairs; saves the annotator in HF format under
annotator/model.
"""
from __future__ import annotations

import functools

import numpy as np
from flax import nnx

from cwpo_jax import models, sharding
from cwpo_jax.data.batching import (
    bucket_length,
    collate_packed_sequences,
    collate_pairs,
    pack_rows,
    pair_sequences,
)
from cwpo_jax.evaluation import label_accuracy
from cwpo_jax.stages import common
from cwpo_jax.train import tasks

STAGE = "annotator"


def score_pairs(cfg, rm, tokenized, tok, name: str):
    """(score of stored chosen, score of stored rejected), each [N], with the jitted pass:
    sequences packed end to end in rows (no padding computed) when cfg.score.packed, else
    chosen / rejected rows padded to the batch's bucket."""
    if cfg.score.packed and not sliding_window(rm):
        return _score_packed(cfg, rm, tokenized, tok, name)
    if cfg.score.packed:
        common.log(name, "sliding-window attention: scoring padded rows, not packed ones")
    collate = functools.partial(collate_pairs, tokenized, batch_size=cfg.score.batch_size,
                                buckets=common.buckets(cfg), pad_id=common.pad_id(tok))
    score_a = np.full(len(tokenized), np.nan)
    score_b = np.full(len(tokenized), np.nan)
    for batch, scores in common.batched_pass(rm, _padded_scores,
                                             lengths=[p.length for p in tokenized],
                                             collate=collate, batch_size=cfg.score.batch_size,
                                             cfg=cfg, name=name, unit="pairs"):
        half = len(scores) // 2
        for row, i in enumerate(batch["pair_index"]):
            if i >= 0:
                score_a[i], score_b[i] = scores[row], scores[half + row]
    return score_a, score_b


def _padded_scores(model, batch):
    return model(batch["input_ids"], batch["attention_mask"])


def _packed_scores(model, batch):
    return model.packed_scores(batch["input_ids"], batch["attention_mask"], batch["positions"],
                               batch["segment_ids"], batch["sequence_index"].shape[1])


def sliding_window(rm) -> bool:
    """Whether the backbone has sliding-window layers (packed rows do not support them)."""
    return bool(any(getattr(rm.config, "sliding_windows", None) or ()))


def packed_plan(cfg, tokenized):
    """(sequences, rows, row_len, rows per batch) of the packed scoring pass: both sequences
    of every pair (data.pair_sequences) in rows as long as the longest sequence's bucket,
    2 x score.batch_size rows per batch (as many as the padded layout's; fewer when all fit),
    rounded up to a multiple of the data-parallel size."""
    sequences = pair_sequences(tokenized)
    row_len = bucket_length(max((len(s) for s in sequences), default=1), common.buckets(cfg))
    rows = pack_rows([len(s) for s in sequences], row_len=row_len,
                     max_segments=cfg.score.max_segments)
    divisor = sharding.batch_divisor(common.mesh_for(cfg))
    batch_rows = -(-min(2 * cfg.score.batch_size, max(len(rows), 1)) // divisor) * divisor
    return sequences, rows, row_len, batch_rows


def _score_packed(cfg, rm, tokenized, tok, name: str):
    n = len(tokenized)
    sequences, rows, row_len, batch_rows = packed_plan(cfg, tokenized)
    collate = functools.partial(collate_packed_sequences, sequences, rows, batch_size=batch_rows,
                                row_len=row_len, max_segments=cfg.score.max_segments,
                                pad_id=common.pad_id(tok))
    scores = np.full(2 * n, np.nan)
    for batch, out in common.batched_pass(rm, _packed_scores, lengths=[row_len] * len(rows),
                                          collate=collate, batch_size=batch_rows, cfg=cfg,
                                          name=name, unit="rows"):
        taken = batch["sequence_index"] >= 0
        scores[batch["sequence_index"][taken]] = out[taken]
    return scores[:n], scores[n:]


def run(cfg) -> dict:
    if common.is_done(cfg, STAGE):
        common.log(STAGE, "annotator exists; skipping")
        return common.read_json(common.done_marker(cfg, STAGE))
    source = common.model_path(cfg, cfg.annotator.model)
    tok = models.load_tokenizer(source)
    pooling = {"pooling": cfg.annotator.pooling} if cfg.annotator.pooling else {}
    rm = models.reward_model_from_pretrained(source, seed=cfg.seed, **pooling)
    encode = common.pair_tokenizer(cfg, tok)
    labelled = encode.encode_pairs(common.load_split(cfg, "labelled"))
    collate = functools.partial(collate_pairs, labelled, buckets=common.buckets(cfg),
                                pad_id=common.pad_id(tok),
                                batch_size=cfg.annotator.train.batch_size
                                // cfg.annotator.train.micro_batches)
    # A frozen backbone trains the scalar head only: a linear probe on the backbone's features.
    full = cfg.annotator.train_backbone
    rm = common.fit(rm, tasks.reward_task, lengths=[p.length for p in labelled], collate=collate,
                    train_cfg=cfg.annotator.train, cfg=cfg, workdir=common.path(cfg, STAGE),
                    name=STAGE,
                    trainable=nnx.Param if full else nnx.All(nnx.Param, nnx.PathContains("score")),
                    flops_per_token=common.train_flops_per_token(rm, lm_head=False,
                                                                 frozen_weights=not full))
    eval_pairs = common.load_split(cfg, "eval")
    summary = {"model": cfg.annotator.model, "labelled_pairs": len(labelled),
               "tokenize": str(encode.stats)}
    if eval_pairs:
        a, b = score_pairs(cfg, rm, encode.encode_pairs(eval_pairs), tok, STAGE + "/eval")
        summary["heldout_accuracy_vs_human"] = label_accuracy(a >= b, np.ones(len(a), bool))
        common.log(STAGE, f"held-out accuracy vs human labels: "
                          f"{summary['heldout_accuracy_vs_human']:.1%} on {len(a)} pairs")
    models.save_pretrained(rm, common.path(cfg, STAGE, "model"), tokenizer=tok)
    common.mark_done(cfg, STAGE, summary)
    return summary
