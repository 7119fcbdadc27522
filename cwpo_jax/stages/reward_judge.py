"""A gold judge backed by a reward-model checkpoint (the paper's evaluation: e.g. Skywork or
OpenAssistant reward models, wherever a hub or a local copy is available)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cwpo_jax import models
from cwpo_jax.data.batching import collate_sequences, default_buckets, plan_batches
from cwpo_jax.data.tokenize import PairTokenizer


class RewardModelJudge:
    def __init__(self, path: str, *, batch_size: int = 8, max_prompt_len: int = 512,
                 max_len: int = 1024):
        self.name = f"reward_model:{path}"
        self.tokenizer = models.load_tokenizer(path)
        self.model = models.reward_model_from_pretrained(path)
        self.encode = PairTokenizer(self.tokenizer, max_prompt_len=max_prompt_len,
                                    max_len=max_len)
        self.batch_size, self.buckets = batch_size, default_buckets(max_len)
        graphdef, self.state = nnx.split(self.model)
        self._score = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))

    def score(self, prompts, responses) -> np.ndarray:
        items = self.encode.encode_sequences([[{"role": "user", "content": p}] for p in prompts],
                                             list(responses))
        pad = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0
        collate = functools.partial(collate_sequences, items, batch_size=self.batch_size,
                                    buckets=self.buckets, pad_id=pad)
        out = np.full(len(items), np.nan)
        for index in plan_batches([s.length for s in items], self.batch_size, shuffle=False):
            batch = collate(index)
            scores = np.asarray(self._score(self.state, jnp.asarray(batch["input_ids"]),
                                            jnp.asarray(batch["attention_mask"])))
            for row, i in enumerate(batch["index"]):
                if i >= 0:
                    out[i] = scores[row]
        return out
