"""What every stage derives from the config the same way: the mesh, the pair tokenizer and
the length buckets of its batches."""
from __future__ import annotations

import functools

from cwpo_jax import sharding
from cwpo_jax.data.batching import default_buckets
from cwpo_jax.data.tokenize import PairTokenizer
from cwpo_jax.stages.model_sources import TINY_CONFIGS  # noqa: F401  (imported from here too)


@functools.lru_cache(maxsize=None)
def _mesh(data: int, fsdp: int, tensor: int):
    return sharding.make_mesh(data, fsdp, tensor)


def mesh_for(cfg):
    """The run's mesh (cfg.mesh), made once per process."""
    return _mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def pair_tokenizer(cfg, tokenizer) -> PairTokenizer:
    return PairTokenizer(tokenizer, max_prompt_len=cfg.data.max_prompt_len,
                         max_len=cfg.data.max_len)


def buckets(cfg) -> tuple[int, ...]:
    return default_buckets(cfg.data.max_len)
