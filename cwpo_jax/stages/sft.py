"""Stage 3, sft: supervised fine-tuning of the strong model on the chosen responses of the
alignment pool (labelled + unlabelled); the result is the reference model pi_ref.

With sft.enabled = False the given model already is the SFT model (e.g. an instruct checkpoint)
and becomes the reference as it is.
"""
from __future__ import annotations

import functools

from cwpo_jax import models
from cwpo_jax.data.batching import collate_sequences
from cwpo_jax.data.tokenize import pad_id
from cwpo_jax.stages import common, run_folder
from cwpo_jax.stages.model_sources import model_path
from cwpo_jax.train import tasks
from cwpo_jax.train.fit import fit
from cwpo_jax.train.flops import train_flops_per_token
from cwpo_jax.train.hosts import log

STAGE = "sft"


@run_folder.stage(STAGE, "reference model exists")
def run(cfg) -> dict:
    source = model_path(cfg, cfg.sft.model)
    if not cfg.sft.enabled:
        log(STAGE, f"sft.enabled=False: {source} is the reference model")
        return {"reference": source, "trained": False}
    tok = models.load_tokenizer(source)
    model = models.from_pretrained(source)
    pairs = run_folder.load_split(cfg, "labelled") + run_folder.load_split(cfg, "unlabelled")
    encode = common.pair_tokenizer(cfg, tok)
    items = common.sequence_store(cfg, encode, [p.prompt for p in pairs],
                                  [p.chosen for p in pairs])
    train = cfg.sft.train
    collate = functools.partial(collate_sequences, items, buckets=common.buckets(cfg),
                                pad_id=pad_id(tok),
                                batch_size=train.batch_size // train.micro_batches)
    model = fit(model, functools.partial(tasks.sft_task, chunk_size=cfg.sft.chunk_size),
                lengths=items.lengths, collate=collate, train_cfg=train,
                mesh=common.mesh_for(cfg), seed=cfg.seed, workdir=run_folder.path(cfg, STAGE),
                name=STAGE, flops_per_token=train_flops_per_token(model, lm_head=True,
                                                                  frozen_weights=False))
    out = run_folder.path(cfg, STAGE, "model")
    models.save_pretrained(model, out, tokenizer=tok)
    return {"reference": out, "trained": True, "sequences": len(items),
            "tokenize": str(items.stats)}
