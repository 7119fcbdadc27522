"""The programs of a configured pipeline, each at the config's batch and longest shape.

Longest shapes: a padded pair or sequence fills data.max_len; a packed alignment row holds the
longest prompt + chosen + rejected the tokenizer admits (a one-token prompt and two responses of
max_len - 1 tokens, so 2 x max_len slots), its responses max_len slots each; prompts for the
sampler fill data.max_prompt_len.
"""
from __future__ import annotations

import functools

import numpy as np
from flax import nnx

from cwpo_jax import models, sharding
from cwpo_jax.data import batching
from cwpo_jax.data.tokenize import TokenizedPair, TokenizedSequence
from cwpo_jax.plan import programs
from cwpo_jax.stages import common, pair_passes
from cwpo_jax.stages.pair_passes import round_up
from cwpo_jax.stages.align import alignment_task
from cwpo_jax.train import feeder, tasks
from cwpo_jax.train.flops import matmul_params, train_flops_per_token

STAGES = ("annotator", "score", "sft", "reference", "align", "sampler")


def _ids(n: int) -> np.ndarray:
    return np.ones(n, np.int32)  # placeholder token ids: only shapes matter


def padded_pair_batch(cfg, pairs: int) -> dict:
    p = cfg.data.max_prompt_len
    item = TokenizedPair(_ids(p), _ids(cfg.data.max_len - p), _ids(cfg.data.max_len - p))
    batch = batching.collate_pairs([item] * pairs, range(pairs), batch_size=pairs,
                                   buckets=common.buckets(cfg), pad_id=0)
    return feeder.add_valid(batch)


def packed_pair_batch(cfg, pairs: int) -> dict:
    r = cfg.data.max_len - 1
    item = TokenizedPair(_ids(1), _ids(r), _ids(r))
    batch = batching.collate_packed_pairs(
        [item] * pairs, range(pairs), batch_size=pairs,
        buckets=batching.default_buckets(round_up(1 + 2 * r, 8)), response_len=round_up(r, 8),
        pad_id=0)
    return feeder.add_valid(batch)


def align_batch(cfg, pairs: int) -> dict:
    """A batch of the alignment layout (packed or padded pairs) with its reference log-probs."""
    batch = packed_pair_batch(cfg, pairs) if cfg.align.packed_pairs else \
        padded_pair_batch(cfg, pairs)
    batch["ref_logps"] = np.zeros(2 * pairs, np.float32)
    return batch


def sequence_batch(cfg, rows: int) -> dict:
    p = cfg.data.max_prompt_len
    item = TokenizedSequence(_ids(p), _ids(cfg.data.max_len - p))
    batch = batching.collate_sequences([item] * rows, range(rows), batch_size=rows,
                                       buckets=common.buckets(cfg), pad_id=0)
    return feeder.add_valid(batch)


def packed_score_batch(cfg, rows: int) -> dict:
    sequences = [_ids(cfg.data.max_len)]
    return batching.collate_packed_sequences(
        sequences, [np.zeros(1, np.int64)] * rows, range(rows), batch_size=rows,
        row_len=cfg.data.max_len, max_segments=cfg.score.max_segments, pad_id=0)


def slots(batch: dict) -> int:
    return int(np.asarray(batch["input_ids"]).size)


def pair_flops_per_token(model, batch: dict, *, train: bool, frozen_weights: bool) -> float:
    """Model FLOPs per slot of a pair batch. Packed rows send only the response slots through
    the LM head (as stages/align.py counts it); padded rows send every position."""
    if train:
        full = train_flops_per_token(model, lm_head=True, frozen_weights=frozen_weights)
        body = train_flops_per_token(model, lm_head=False, frozen_weights=frozen_weights)
    else:
        full, body = (2.0 * matmul_params(model, lm_head=head) for head in (True, False))
    if "response_ids" not in batch:
        return full
    return body + (full - body) * np.asarray(batch["response_ids"]).size / slots(batch)


def plan_programs(cfg, mesh, *, stages=STAGES, log=print) -> list[programs.Program]:
    """Compile every program of the pipeline `cfg` runs, over `mesh` (compile-only devices)."""
    out = []
    divisor = sharding.batch_divisor(mesh)

    def add(program):
        status = program.error or f"{program.memory.get('peak', 0) / 2**30:.2f} GiB peak"
        log(f"  {program.name}: compiled in {program.compile_s:.1f} s ({status})")
        out.append(program)

    if "annotator" in stages or "score" in stages:
        label, rm = programs.abstract_model(cfg.annotator.model, reward=True, seed=cfg.seed)
        if "annotator" in stages:
            train = cfg.annotator.train
            batch = padded_pair_batch(cfg, train.batch_size // train.micro_batches)
            full = cfg.annotator.train_backbone
            add(programs.train_step(
                "annotator step", label, rm, tasks.reward_task, train, mesh, batch,
                trainable=nnx.Param if full else nnx.All(nnx.Param, nnx.PathContains("score")),
                flops_per_token=train_flops_per_token(rm, lm_head=False,
                                                      frozen_weights=not full),
                tokens=slots(batch)))
            label, rm = programs.abstract_model(cfg.annotator.model, reward=True, seed=cfg.seed)
        if "score" in stages:
            packed = cfg.score.packed and not pair_passes.sliding_window(rm)
            if packed:
                batch = packed_score_batch(cfg, round_up(2 * cfg.score.batch_size, divisor))
                fn = pair_passes._packed_scores
            else:
                batch = padded_pair_batch(cfg, cfg.score.batch_size)
                fn = pair_passes._padded_scores
            add(programs.forward_pass("scoring pass", label, rm, fn, mesh, batch,
                                      flops_per_token=2.0 * matmul_params(rm, lm_head=False),
                                      tokens=slots(batch)))

    student = cfg.sft.model
    if "sft" in stages and cfg.sft.enabled:
        label, model = programs.abstract_model(student, seed=cfg.seed)
        train = cfg.sft.train
        batch = sequence_batch(cfg, train.batch_size // train.micro_batches)
        add(programs.train_step(
            "SFT step", label, model, functools.partial(tasks.sft_task,
                                                        chunk_size=cfg.sft.chunk_size),
            train, mesh, batch,
            flops_per_token=train_flops_per_token(model, lm_head=True, frozen_weights=False),
            tokens=slots(batch)))

    if "reference" in stages:
        label, model = programs.abstract_model(student, seed=cfg.seed)
        batch = align_batch(cfg, round_up(cfg.align.logprob_batch_size, divisor))
        fn = functools.partial(pair_passes._logprob_fn, chunk_size=cfg.align.chunk_size)
        add(programs.forward_pass("reference pass", label, model, fn, mesh, batch,
                                  flops_per_token=pair_flops_per_token(
                                      model, batch, train=False, frozen_weights=True),
                                  tokens=slots(batch)))

    if "align" in stages:
        a = cfg.align
        lora = None
        if a.lora_rank > 0:
            lora = models.LoRAConfig(rank=a.lora_rank, alpha=a.lora_alpha, dropout=a.lora_dropout,
                                     targets=tuple(a.lora_targets), layers=tuple(a.lora_layers))
        label, model = programs.abstract_model(student, lora=lora, seed=cfg.seed)
        trainable = models.trainable_filter(model) if lora is not None else nnx.Param
        task = alignment_task(a)
        batch = align_batch(cfg, a.train.batch_size // a.train.micro_batches)
        program = programs.train_step(
            f"align step ({a.loss}{', LoRA r=%d' % a.lora_rank if lora else ''})", label, model,
            task, a.train, mesh, batch, trainable=trainable,
            flops_per_token=pair_flops_per_token(model, batch, train=True,
                                                 frozen_weights=lora is not None),
            tokens=slots(batch))
        if lora is not None and a.lora_layers and a.frozen_cache_gb > 0:
            program.note = "planned without the frozen-layer cache (the whole stack every step)"
        add(program)

    if "sampler" in stages:
        label, model = programs.abstract_model(student, seed=cfg.seed)
        e = cfg.evaluate
        item = TokenizedSequence(_ids(cfg.data.max_prompt_len), _ids(0))
        prompts = batching.collate_prompts([item] * e.batch_size, range(e.batch_size),
                                           batch_size=e.batch_size, buckets=common.buckets(cfg),
                                           pad_id=0)
        eos = model.config.eos_token_id
        eos = tuple(eos) if isinstance(eos, (tuple, list)) else ((eos,) if eos is not None else ())
        add(programs.sampler("sampler", label, model, mesh, prompts,
                             max_new_tokens=e.max_new_tokens, eos_ids=eos, pad=0))
    return out
