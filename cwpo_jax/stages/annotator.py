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

from cwpo_jax import models
from cwpo_jax.data.batching import collate_pairs
from cwpo_jax.data.tokenize import pad_id
from cwpo_jax.evaluation import label_accuracy
from cwpo_jax.stages import common, run_folder
from cwpo_jax.stages.model_sources import model_path
from cwpo_jax.stages.pair_passes import score_pairs
from cwpo_jax.train import tasks
from cwpo_jax.train.fit import fit
from cwpo_jax.train.flops import train_flops_per_token
from cwpo_jax.train.hosts import log

STAGE = "annotator"


@run_folder.stage(STAGE, "annotator exists")
def run(cfg) -> dict:
    source = model_path(cfg, cfg.annotator.model)
    tok = models.load_tokenizer(source)
    pooling = {"pooling": cfg.annotator.pooling} if cfg.annotator.pooling else {}
    rm = models.reward_model_from_pretrained(source, seed=cfg.seed, **pooling)
    encode = common.pair_tokenizer(cfg, tok)
    labelled = common.pair_store(cfg, encode, run_folder.load_split(cfg, "labelled"))
    collate = functools.partial(collate_pairs, labelled, buckets=common.buckets(cfg),
                                pad_id=pad_id(tok),
                                batch_size=cfg.annotator.train.batch_size
                                // cfg.annotator.train.micro_batches)
    # A frozen backbone trains the scalar head only: a linear probe on the backbone's features.
    full = cfg.annotator.train_backbone
    rm = fit(rm, tasks.reward_task, lengths=labelled.lengths, collate=collate,
             train_cfg=cfg.annotator.train, mesh=common.mesh_for(cfg), seed=cfg.seed,
             workdir=run_folder.path(cfg, STAGE), name=STAGE,
             trainable=nnx.Param if full else nnx.All(nnx.Param, nnx.PathContains("score")),
             flops_per_token=train_flops_per_token(rm, lm_head=False, frozen_weights=not full))
    eval_pairs = run_folder.load_split(cfg, "eval")
    summary = {"model": cfg.annotator.model, "labelled_pairs": len(labelled),
               "tokenize": str(labelled.stats)}
    if eval_pairs:
        a, b = score_pairs(cfg, rm, common.pair_store(cfg, encode, eval_pairs), tok,
                           STAGE + "/eval")
        summary["heldout_accuracy_vs_human"] = label_accuracy(a >= b, np.ones(len(a), bool))
        log(STAGE, f"held-out accuracy vs human labels: "
                   f"{summary['heldout_accuracy_vs_human']:.1%} on {len(a)} pairs")
    models.save_pretrained(rm, run_folder.path(cfg, STAGE, "model"), tokenizer=tok)
    return summary
