"""On-disk cache of tokenised pairs, keyed by a content hash of the inputs.

Every stage (annotator, scoring, reference log-probs, alignment) tokenises the same pairs with
the same tokenizer; with chat templates that costs about a millisecond per pair. The key covers
the tokenizer (its full serialisation and chat template), the length limits and the text of
every pair in order, so any change gives a new file and a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from cwpo_jax.data.records import PreferencePair
from cwpo_jax.data.tokenize import PairTokenizer, TokenizedPair
from cwpo_jax.io_utils import atomic_open

_FIELDS = ("prompt", "chosen", "rejected")


def cache_key(encoder: PairTokenizer, pairs: Sequence[PreferencePair]) -> str:
    h = hashlib.blake2b(digest_size=16)
    tok = encoder.tok
    backend = getattr(tok, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(type(tok))).encode())
    for part in (
        getattr(tok, "chat_template", None) or "",
        tok.bos_token_id,
        encoder.end_id,
        encoder.max_prompt_len,
        encoder.max_len,
        encoder.max_response_len,
        "v1",
    ):
        h.update(repr(part).encode() + b"\0")
    for p in pairs:
        for m in p.prompt:
            h.update(m["role"].encode() + b"\0" + m["content"].encode() + b"\0")
        h.update(b"\1" + p.chosen.encode() + b"\0" + p.rejected.encode() + b"\2")
    return h.hexdigest()


def encode_pairs_cached(
    encoder: PairTokenizer, pairs: Sequence[PreferencePair], cache_dir: str
) -> tuple[list[TokenizedPair], str]:
    """encoder.encode_pairs(pairs), read from or written to cache_dir/<key>.npz.
    Returns (items, path). encoder.stats only counts work done, so it stays zero on a hit."""
    path = os.path.join(cache_dir, f"pairs-{cache_key(encoder, pairs)}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            cols = {f: np.split(z[f], z[f + "_offsets"][1:-1]) for f in _FIELDS}
        if len(cols["prompt"]) == len(pairs):
            return [TokenizedPair(*(cols[f][i] for f in _FIELDS)) for i in range(len(pairs))], path
    items = encoder.encode_pairs(pairs)
    arrays = {}
    for f in _FIELDS:
        parts = [getattr(t, f) for t in items]
        arrays[f] = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        arrays[f + "_offsets"] = np.concatenate([[0], np.cumsum([len(x) for x in parts])])
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return items, path
