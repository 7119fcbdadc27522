"""Frozen bottom layers run once per pool instead of at every training step.

With adapters only in the top layers (align.lora_layers), the layers below the lowest adapted
one see the same tokens at every step and never change, so their output is a pure function of
the pair. align runs them once over the pool (on the reference model: the policy shares its
frozen layers) and trains from that output (batch["residual"]): a step then costs the top
layers' forward and backward only. The output is held in host memory, pairs x packed tokens x
hidden x 4 bytes; above align.frozen_cache_gb the layers run at every step as usual.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from cwpo_jax.data.token_store import field_lengths
from cwpo_jax.stages import common
from cwpo_jax.stages.pair_passes import pair_batches
from cwpo_jax.train.hosts import log
from cwpo_jax.train.passes import batched_pass
from cwpo_jax.train.tasks import packed_hidden


def supports_residual_input(model) -> bool:
    """Whether the model's forward can start and stop part-way up the stack (Llama family)."""
    return "residual" in inspect.signature(model.forward).parameters


def cache_bytes(tokenized, hidden_size: int) -> int:
    """Host memory of the cached residual stream of every packed pair row, float32."""
    tokens = sum(int(field_lengths(tokenized, f).sum()) for f in ("prompt", "chosen", "rejected"))
    return tokens * hidden_size * 4


def residuals(cfg, model, tokenized, tok, *, stop_layer: int, name: str) -> list[np.ndarray]:
    """Per pair, [prompt + chosen + rejected tokens, D]: the residual stream leaving layer
    stop_layer - 1 in the packed row layout (prompt, chosen, rejected), float32."""
    batch_size = cfg.align.logprob_batch_size
    collate, lengths = pair_batches(cfg, tokenized, tok)
    collate = functools.partial(collate, tokenized, batch_size=batch_size)
    out: list[np.ndarray | None] = [None] * len(tokenized)
    fn = functools.partial(packed_hidden, stop_layer=stop_layer)
    for batch, hidden in batched_pass(model, fn, lengths=lengths, collate=collate,
                                      batch_size=batch_size, mesh=common.mesh_for(cfg),
                                      name=name, unit="pairs"):
        for row, i in enumerate(batch["pair_index"]):
            if i >= 0:
                out[i] = np.asarray(hidden[row, :lengths[i]], np.float32)
    log(name, f"cached the output of layers 0-{stop_layer - 1} for {len(out)} pairs")
    return out
