"""The jitted passes over preference pairs that several stages run: reward-model scores of
both responses (annotator held-out check, score stage) and summed policy log-probs of both
responses in the alignment layout (align's reference pass, evaluation's student movement)."""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from cwpo_jax import sharding
from cwpo_jax.data.batching import (
    bucket_length,
    collate_packed_pairs,
    collate_packed_sequences,
    collate_pairs,
    default_buckets,
    pack_rows,
    pair_sequences,
    shared_prefix,
    starts_with,
)
from cwpo_jax.data.token_store import field_lengths, item_lengths
from cwpo_jax.data.tokenize import pad_id
from cwpo_jax.models import layers
from cwpo_jax.stages import common
from cwpo_jax.train import tasks
from cwpo_jax.train.hosts import log
from cwpo_jax.train.passes import batched_pass

# ------------------------------------------------------------------ reward-model scores


def score_pairs(cfg, rm, tokenized, tok, name: str):
    """(score of stored chosen, score of stored rejected), each [N], with the jitted pass:
    sequences packed end to end in rows (no padding computed) when cfg.score.packed, else
    chosen / rejected rows padded to the batch's bucket."""
    if cfg.score.packed and not sliding_window(rm):
        return _score_packed(cfg, rm, tokenized, tok, name)
    if cfg.score.packed:
        log(name, "sliding-window attention: scoring padded rows, not packed ones")
    collate = functools.partial(collate_pairs, tokenized, batch_size=cfg.score.batch_size,
                                buckets=common.buckets(cfg), pad_id=pad_id(tok))
    score_a = np.full(len(tokenized), np.nan)
    score_b = np.full(len(tokenized), np.nan)
    for batch, scores in batched_pass(rm, _padded_scores, lengths=item_lengths(tokenized),
                                      collate=collate, batch_size=cfg.score.batch_size,
                                      mesh=common.mesh_for(cfg), name=name, unit="pairs"):
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
    prompts = field_lengths(tokenized, "prompt")
    lengths = np.concatenate([prompts + field_lengths(tokenized, "chosen"),
                              prompts + field_lengths(tokenized, "rejected")])
    row_len = bucket_length(int(lengths.max(initial=1)), common.buckets(cfg))
    rows = pack_rows(lengths, row_len=row_len, max_segments=cfg.score.max_segments)
    divisor = sharding.batch_divisor(common.mesh_for(cfg))
    batch_rows = -(-min(2 * cfg.score.batch_size, max(len(rows), 1)) // divisor) * divisor
    return sequences, rows, row_len, batch_rows


def _score_packed(cfg, rm, tokenized, tok, name: str):
    n = len(tokenized)
    sequences, rows, row_len, batch_rows = packed_plan(cfg, tokenized)
    collate = functools.partial(collate_packed_sequences, sequences, rows, batch_size=batch_rows,
                                row_len=row_len, max_segments=cfg.score.max_segments,
                                pad_id=pad_id(tok))
    scores = np.full(2 * n, np.nan)
    for batch, out in batched_pass(rm, _packed_scores, lengths=[row_len] * len(rows),
                                   collate=collate, batch_size=batch_rows,
                                   mesh=common.mesh_for(cfg), name=name, unit="rows"):
        taken = batch["sequence_index"] >= 0
        scores[batch["sequence_index"][taken]] = out[taken]
    return scores[:n], scores[n:]


# ------------------------------------------------------------------ policy log-probs


def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def shares_prefix(cfg, model, start_layer: int = 0) -> bool:
    """Whether packed rows leave the prompts' common prefix (data.shared_prefix) to one pass per
    batch: align.shared_prefix, and the whole stack in the plain layer loop, which the KV-cache
    path that carries the prefix runs (not from a frozen layer's output, not scanned or
    rematerialised layers)."""
    return bool(cfg.align.packed_pairs and cfg.align.shared_prefix and not start_layer
                and not cfg.align.train.scan_layers
                and layers.remat_policy(model.config.remat) == "none"
                and cfg.align.train.remat == "none")


def pair_batches(cfg, pool, tok, *, share_prefix: bool = False) -> tuple[Callable, np.ndarray]:
    """(collate(items, index, batch_size=, swap=, weights=), row length of each pool pair).

    Shapes come from the whole pool, so every method and the reference pass share compiled
    programs: packed rows use buckets up to the longest prompt + chosen + rejected and a fixed
    response length (the longest response, rounded up to a multiple of 8). share_prefix
    (see shares_prefix): the tokens most prompts of the pool start with (data.shared_prefix)
    leave the rows of the prompts that start with them.
    """
    if not cfg.align.packed_pairs:
        collate = functools.partial(collate_pairs, buckets=common.buckets(cfg),
                                    pad_id=pad_id(tok))
        return collate, item_lengths(pool)
    chosen, rejected = field_lengths(pool, "chosen"), field_lengths(pool, "rejected")
    lengths = field_lengths(pool, "prompt") + chosen + rejected
    prefix = shared_prefix(pool) if share_prefix else np.zeros(0, np.int32)
    if len(prefix):  # rows that continue the prefix are that much shorter
        shifted = np.array([starts_with(pool[i].prompt, prefix) for i in range(len(pool))])
        lengths = lengths - len(prefix) * shifted
    longest_response = int(np.maximum(chosen, rejected).max(initial=1))
    collate = functools.partial(
        collate_packed_pairs, buckets=default_buckets(round_up(int(lengths.max(initial=1)), 8)),
        response_len=round_up(longest_response, 8), pad_id=pad_id(tok),
        prefix=prefix if len(prefix) else None)
    return collate, lengths


def pair_logprobs_pass(cfg, model, tokenized, tok, *, name: str, start_layer: int = 0,
                       residuals=None, ld_alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probs of every tokenized pair's chosen and rejected response under `model`,
    [N] each, in one jitted pass (align.logprob_batch_size pairs per batch, the alignment
    layout). start_layer > 0: the layers below it are not run; `residuals` (one per pair,
    stages/frozen_layers.py) is their output. ld_alpha < 1: length-desensitised sums
    (losses.length_desensitised), as the alignment step computes the policy's."""
    batch_size = cfg.align.logprob_batch_size
    pool_collate, lengths = pair_batches(cfg, tokenized, tok,
                                         share_prefix=shares_prefix(cfg, model, start_layer))

    def collate(index, *, shard):
        batch = pool_collate(tokenized, index, batch_size=batch_size, shard=shard)
        if start_layer:
            batch["residual"] = place_residuals(batch["pair_index"], tokenized, residuals, None,
                                                length=batch["input_ids"].shape[1])
        return batch

    fn = functools.partial(_logprob_fn, chunk_size=cfg.align.chunk_size, start_layer=start_layer,
                           ld_alpha=ld_alpha)
    chosen = np.full(len(tokenized), np.nan)
    rejected = np.full(len(tokenized), np.nan)
    for batch, logp in batched_pass(model, fn, lengths=lengths, collate=collate,
                                    batch_size=batch_size, mesh=common.mesh_for(cfg), name=name,
                                    unit="pairs"):
        half = len(logp) // 2
        for row, i in enumerate(batch["pair_index"]):
            if i >= 0:
                chosen[i], rejected[i] = logp[row], logp[half + row]
    return chosen, rejected


def _logprob_fn(model, batch, *, chunk_size, start_layer=0, ld_alpha=1.0):
    return tasks.pair_logprobs(model, batch, chunk_size=chunk_size, start_layer=start_layer,
                               ld_alpha=ld_alpha)[0]


def place_residuals(pair_index, items, item_residuals, swap, *, length: int) -> np.ndarray:
    """[rows, length, D] frozen-layer outputs (stages/frozen_layers.py), one [tokens, D] array
    per item in the (prompt, chosen, rejected) order, laid out as collate_packed_pairs lays out
    the tokens: prompt, then the two responses in training order (rejected first where swap),
    zeros after.

    pair_index [rows] indexes items / item_residuals / swap (-1 = a padding row)."""
    d = item_residuals[0].shape[-1]
    out = np.zeros((len(pair_index), length, d), np.float32)
    for row, i in enumerate(pair_index):
        if i < 0:
            continue
        p, h = items[i], item_residuals[i]
        n_p, n_c = len(p.prompt), len(p.chosen)
        prompt, chosen, rejected = h[:n_p], h[n_p:n_p + n_c], h[n_p + n_c:]
        parts = (prompt, rejected, chosen) if swap is not None and swap[i] else (
            prompt, chosen, rejected)
        row_h = np.concatenate(parts)
        out[row, :len(row_h)] = row_h
    return out

