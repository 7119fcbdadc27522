"""Demo preference pool: real prompts (chatterbot-corpus), `data.responses_per_prompt`
responses each sampled from the student (the usual way preference data is made), cached on disk
per prompt so a pool is built once and a larger pool reuses a smaller one's responses.

Every response draws from its own key, fold_in(key(pool seed), hash(prompt, j)), so a prompt's
responses do not depend on which other prompts are in the pool. The cache file's key covers the
student checkpoint and every sampling setting (not the prompt list), so a changed setting never
reuses stale responses.
"""
from __future__ import annotations

import hashlib
import json
import os

import jax

from cwpo_jax import assets
from cwpo_jax.data.splits import seeded_rank
from cwpo_jax.io_utils import atomic_open, hash_json, hash_path
from cwpo_jax.stages.config import pool_seed
from cwpo_jax.stages.model_sources import model_path
from cwpo_jax.stages.sampling import sample_texts
from cwpo_jax.train.hosts import log

STAGE = "data/sample"


def demo_prompts(cfg) -> list[str]:
    """`data.num_pairs` chatterbot prompts, chosen by a seeded hash (stable, order-free)."""
    prompts = assets.chatterbot_prompts()
    if cfg.data.num_pairs > len(prompts):
        raise ValueError(f"data.num_pairs={cfg.data.num_pairs} but the corpus has only "
                         f"{len(prompts)} distinct prompts")
    return sorted(prompts, key=lambda p: seeded_rank(p, pool_seed(cfg)))[:cfg.data.num_pairs]


def response_row_id(prompt: str, j: int) -> int:
    """The sampler's row id (key) of response j to `prompt`: a 32-bit hash of both."""
    digest = hashlib.sha256(f"{j}\x00{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


def _cache_path(cfg) -> str:
    d = cfg.data
    # The original checkpoint's hash (not the converted copy's): the cache outlives run folders.
    source = cfg.sft.model if cfg.sft.model.startswith("tiny:") else assets.resolve(cfg.sft.model)
    student = source if os.path.exists(source) else model_path(cfg, cfg.sft.model)
    key = hash_json({"student": hash_path(student), "seed": pool_seed(cfg), "keys": "per-row",
                     "max_new_tokens": d.response_max_new_tokens,
                     "temperature": d.response_temperature, "top_p": d.response_top_p,
                     "max_prompt_len": d.max_prompt_len, "max_len": d.max_len})
    return os.path.join(os.path.expanduser(d.cache_dir), "demo_pairs", f"{key}.jsonl")


def _read_cache(cache: str) -> dict[str, list[str]]:
    if not os.path.exists(cache):
        return {}
    with open(cache, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return {r["prompt"]: r["responses"] for r in rows}


def sampled_responses(cfg) -> list[tuple[str, list[str]]]:
    """(prompt, [data.responses_per_prompt responses]) for the demo pool, from the cache where
    it has them; the rest are sampled from the student and added to the cache."""
    prompts = demo_prompts(cfg)
    d = cfg.data
    n = d.responses_per_prompt
    cache = _cache_path(cfg)
    cached = _read_cache(cache)
    missing = [(p, j) for p in prompts for j in range(n) if len(cached.get(p, ())) <= j]
    log(STAGE, f"{len(prompts) * n - len(missing)} of {len(prompts) * n} responses from "
               f"cache {cache}")
    if missing:
        texts = sample_texts(
            cfg, model_path(cfg, cfg.sft.model),
            [[{"role": "user", "content": p}] for p, _ in missing], seed=pool_seed(cfg),
            row_ids=[response_row_id(p, j) for p, j in missing],
            max_new_tokens=d.response_max_new_tokens, temperature=d.response_temperature,
            top_p=d.response_top_p, batch_size=d.sample_batch_size, name=STAGE)
        for (p, j), text in zip(missing, texts):
            responses = cached.setdefault(p, [])
            assert len(responses) == j  # `missing` lists each prompt's responses in order
            responses.append(text)
        if jax.process_index() == 0:
            with atomic_open(cache) as f:
                for p, responses in cached.items():
                    f.write(json.dumps({"prompt": p, "responses": responses},
                                       ensure_ascii=False) + "\n")
    return [(p, cached[p][:n]) for p in prompts]
