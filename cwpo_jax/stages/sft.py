"""Stage 3, sft: supervised fine-tuning of the strong model on the chosen responses of the
alignment pool (labelled + unlabelled); the result is the reference model pi_ref.

With sft.enabled = False the given model already is the SFT model (e.g. an instruct checkpoint)
and becomes the reference as it is.
"""
from __future__ import annotations

import functools


from cwpo_jax import models
from cwpo_jax.data.batching import collate_sequences
from cwpo_jax.stages import common
from cwpo_jax.train import tasks

STAGE = "sft"


def reference_path(cfg) -> str:
    summary = common.read_json(common.done_marker(cfg, STAGE))
    return summary["reference"]


def run(cfg) -> dict:
    if common.is_done(cfg, STAGE):
        common.log(STAGE, "reference model exists; skipping")
        return common.read_json(common.done_marker(cfg, STAGE))
    source = common.model_path(cfg, cfg.sft.model)
    if not cfg.sft.enabled:
        summary = {"reference": source, "trained": False}
        common.log(STAGE, f"sft.enabled=False: {source} is the reference model")
        common.mark_done(cfg, STAGE, summary)
        return summary
    tok = models.load_tokenizer(source)
    model = models.from_pretrained(source)
    pairs = common.load_split(cfg, "labelled") + common.load_split(cfg, "unlabelled")
    encode = common.pair_tokenizer(cfg, tok)
    items = encode.encode_sequences([p.prompt for p in pairs], [p.chosen for p in pairs])
    train = cfg.sft.train
    collate = functools.partial(collate_sequences, items, buckets=common.buckets(cfg),
                                pad_id=common.pad_id(tok),
                                batch_size=train.batch_size // train.micro_batches)
    model = common.fit(model, functools.partial(tasks.sft_task, chunk_size=cfg.align.chunk_size),
                       lengths=[s.length for s in items], collate=collate, train_cfg=train,
                       cfg=cfg, workdir=common.path(cfg, STAGE), name=STAGE,
                       flops_per_token=common.train_flops_per_token(
                           model, lm_head=True, frozen_weights=False))
    out = common.path(cfg, STAGE, "model")
    models.save_pretrained(model, out, tokenizer=tok)
    summary = {"reference": out, "trained": True, "sequences": len(items),
               "tokenize": str(encode.stats)}
    common.mark_done(cfg, STAGE, summary)
    return summary
