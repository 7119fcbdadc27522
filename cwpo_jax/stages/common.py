"""What every stage derives from the config the same way: the mesh, the pair tokenizer, the
token stores of its pairs and the length buckets of its batches."""
from __future__ import annotations

import functools
import os

import jax

from cwpo_jax import sharding
from cwpo_jax.data import token_store
from cwpo_jax.data.batching import default_buckets
from cwpo_jax.data.tokenize import PairTokenizer
from cwpo_jax.stages import run_folder
from cwpo_jax.stages.model_sources import TINY_CONFIGS  # noqa: F401  (imported from here too)
from cwpo_jax.train.hosts import sync


@functools.lru_cache(maxsize=None)
def _mesh(data: int, fsdp: int, tensor: int):
    return sharding.make_mesh(data, fsdp, tensor)


def mesh_for(cfg):
    """The run's mesh (cfg.mesh), made once per process."""
    return _mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def pair_tokenizer(cfg, tokenizer) -> PairTokenizer:
    return PairTokenizer(tokenizer, max_prompt_len=cfg.data.max_prompt_len,
                         max_len=cfg.data.max_len)


def pair_store(cfg, encoder: PairTokenizer, pairs) -> token_store.TokenStore:
    """encoder.encode_pairs(pairs) as a memory-mapped token store under <run folder>/tokens."""
    key = token_store.pairs_key(encoder, pairs)
    return _shared_store(cfg, "pairs", key, len(pairs),
                         lambda lo, hi: encoder.encode_pairs(pairs[lo:hi]), encoder)


def sequence_store(cfg, encoder: PairTokenizer, prompts,
                   responses) -> token_store.TokenStore:
    """encoder.encode_sequences(prompts, responses) as a memory-mapped token store under
    <run folder>/tokens."""
    key = token_store.sequences_key(encoder, prompts, responses)
    return _shared_store(cfg, "sequences", key, len(prompts),
                         lambda lo, hi: encoder.encode_sequences(prompts[lo:hi],
                                                                 responses[lo:hi]), encoder)


# Items tokenised and written at a time: the writing process holds one chunk's token ids as
# Python objects, never the split's.
STORE_CHUNK = 8192


def _shared_store(cfg, kind: str, key: str, count: int, encode,
                  encoder) -> token_store.TokenStore:
    """The store of encode(0, count), written unless it is there (a later stage or a rerun with
    the same inputs reuses it). The items are cut into ceil(count / STORE_CHUNK) consecutive
    chunks; process i of n tokenises chunks i, i + n, ... each into a part, a barrier, process
    0 joins the parts, then every process maps the one folder (the run folder is shared, like
    the checkpoints). One chunk is written in place. encode(lo, hi): items lo..hi-1."""
    directory = token_store.store_dir(run_folder.path(cfg, "tokens"), kind, key)
    name = os.path.basename(directory)
    if token_store.open_store(directory) is None:
        i, n = jax.process_index(), jax.process_count()
        chunks = max(1, -(-count // STORE_CHUNK))
        if chunks == 1:
            if i == 0:
                token_store.ensure_store(directory, kind, lambda: encode(0, count), encoder)
        else:
            for c in range(i, chunks, n):
                lo, hi = c * count // chunks, (c + 1) * count // chunks
                token_store.ensure_store(token_store.part_dir(directory, c, chunks), kind,
                                         lambda: encode(lo, hi), encoder)  # called at once
            sync(f"token store parts {name}")
            if i == 0:
                token_store.merge_parts(directory, chunks)
    sync(f"token store {name}")
    return token_store.TokenStore(directory)


def buckets(cfg) -> tuple[int, ...]:
    return default_buckets(cfg.data.max_len)
