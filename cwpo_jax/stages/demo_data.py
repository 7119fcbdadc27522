"""Demo preference pool: real prompts (chatterbot-corpus), two responses each sampled from the
student (the usual way preference data is made), cached on disk so it is built once.

The cache key covers the student checkpoint, the prompts and every sampling setting, so a
changed setting never reuses stale responses.
"""
from __future__ import annotations

import functools
import json
import os

import jax

from cwpo_jax import assets
from cwpo_jax.data.splits import seeded_rank
from cwpo_jax.io_utils import atomic_open, hash_json, hash_path
from cwpo_jax.stages import common
from cwpo_jax.stages.config import pool_seed

STAGE = "data/sample"


def demo_prompts(cfg) -> list[str]:
    """`data.num_pairs` chatterbot prompts, chosen by a seeded hash (stable, order-free)."""
    prompts = assets.chatterbot_prompts()
    if cfg.data.num_pairs > len(prompts):
        raise ValueError(f"data.num_pairs={cfg.data.num_pairs} but the corpus has only "
                         f"{len(prompts)} distinct prompts")
    return sorted(prompts, key=lambda p: seeded_rank(p, pool_seed(cfg)))[:cfg.data.num_pairs]


def sampled_triples(cfg) -> list[tuple[str, str, str]]:
    """(prompt, response a, response b) for the demo pool; pairs whose two responses are equal
    or empty are dropped and counted in the log."""
    student = common.model_path(cfg, cfg.sft.model)
    prompts = demo_prompts(cfg)
    d = cfg.data
    # The original checkpoint's hash (not the converted copy's): the cache outlives run folders.
    source = cfg.sft.model if cfg.sft.model.startswith("tiny:") else assets.resolve(cfg.sft.model)
    key = hash_json({"student": hash_path(source if os.path.exists(source) else student),
                     "prompts": prompts, "seed": pool_seed(cfg),
                     "max_new_tokens": d.response_max_new_tokens,
                     "temperature": d.response_temperature, "top_p": d.response_top_p,
                     "max_prompt_len": d.max_prompt_len, "max_len": d.max_len})
    cache = os.path.join(os.path.expanduser(d.cache_dir), "demo_pairs", f"{key}.jsonl")
    if os.path.exists(cache):
        with open(cache, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        common.log(STAGE, f"{len(rows)} sampled pairs from cache {cache}")
    else:
        messages = [[{"role": "user", "content": p}] for p in prompts]
        sample = functools.partial(
            common.sample_texts, cfg, student, messages, max_new_tokens=d.response_max_new_tokens,
            temperature=d.response_temperature, top_p=d.response_top_p,
            batch_size=d.sample_batch_size)
        first = sample(seed=pool_seed(cfg), name=STAGE + " a")
        second = sample(seed=pool_seed(cfg) + 10_000, name=STAGE + " b")
        rows = [{"prompt": p, "a": a, "b": b} for p, a, b in zip(prompts, first, second)]
        if jax.process_index() == 0:
            with atomic_open(cache) as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    triples = [(r["prompt"], r["a"], r["b"]) for r in rows if r["a"] and r["b"] and r["a"] != r["b"]]
    if len(triples) < len(rows):
        common.log(STAGE, f"dropped {len(rows) - len(triples)} pairs with an empty or duplicate "
                          "response")
    return triples
