"""Sampling from a causal LM for the stages that need responses (evaluation, demo data)."""
from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cwpo_jax import models
from cwpo_jax.data.batching import collate_prompts, plan_batches
from cwpo_jax.data.tokenize import pad_id
from cwpo_jax.stages import common
from cwpo_jax.train.hosts import log
from cwpo_jax.train.state import variable_shardings


def shard_weights(model, mesh):
    """The model with its weights sharded over the run's mesh by their logical axes (fsdp,
    tensor), as the train steps hold them: a model larger than one device's memory samples.
    Prompts stay whole on every device (the sampler's batches are small)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, variable_shardings(state, mesh)))


def sample_texts(cfg, model_path: str, prompts, *, seed: int, row_ids: Sequence[int],
                 max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                 name: str) -> list[str]:
    """One sampled response per prompt (lists of chat messages) from the causal LM at
    model_path, decoded without special tokens. Batches are left-padded, length-sorted.

    Row i draws from the key fold_in(key(seed), row_ids[i]) alone: two models sampled with the
    same seed and row ids use the same random numbers on the same prompts (common random
    numbers), whatever the batching."""
    if len(row_ids) != len(prompts):
        raise ValueError(f"{len(row_ids)} row ids for {len(prompts)} prompts")
    tok = models.load_tokenizer(model_path)
    model = shard_weights(models.from_pretrained(model_path), common.mesh_for(cfg))
    items = common.pair_tokenizer(cfg, tok).encode_prompt_only(prompts)
    texts = [None] * len(items)
    base = jax.random.key(seed)
    row_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.asarray(np.asarray(row_ids, np.int64) % 2**32, jnp.uint32))
    plan = plan_batches([len(s.prompt) for s in items], batch_size, shuffle=False)
    done, start = 0, time.perf_counter()
    for index in plan:
        batch = collate_prompts(items, index, batch_size=batch_size, buckets=common.buckets(cfg),
                                pad_id=pad_id(tok))
        mask = batch["attention_mask"].copy()
        mask[:, -1] = 1  # padding rows of a short batch need one real slot for the sampler
        out = models.generate(model, batch["input_ids"], mask,
                              key=row_keys[np.maximum(batch["index"], 0)],
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, eos_token_id=tok.eos_token_id,
                              pad_token_id=pad_id(tok))
        tokens, gen_mask = np.asarray(out.tokens), np.asarray(out.mask)
        for row, i in enumerate(batch["index"]):
            if i >= 0:
                texts[i] = tok.decode(tokens[row][gen_mask[row] > 0],
                                      skip_special_tokens=True).strip()
        done += len(index)
        rate = done / (time.perf_counter() - start)
        log(name, f"sampled {done}/{len(items)} ({rate:.2f} responses/s, ETA "
                  f"{(len(items) - done) / max(rate, 1e-9):.0f}s)")
    return texts
