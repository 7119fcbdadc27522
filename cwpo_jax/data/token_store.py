"""Tokenised pairs and sequences on disk, memory-mapped, keyed by a content hash of the inputs.

A store is one folder: per field a flat int32 `<field>.npy` (every item's ids end to end) and
int64 `<field>_offsets.npy` (N + 1 item boundaries), plus meta.json (kind, count, the
tokeniser's stats), written last. TokenStore opens the arrays with np.load(mmap_mode="r"):
an item is a TokenizedPair / TokenizedSequence of slices of the maps, so collating a batch
reads that batch's rows from disk and nothing else; lengths come from the offsets.

The key covers the tokenizer (its full serialisation and chat template), the length limits
and every text in order, so any change gives a new folder and a stale store is never read.
A store is written into a temporary folder and renamed into place, so a crash leaves no
folder that looks complete; open_store refuses one with a file missing or inconsistent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np

from cwpo_jax.data.records import PreferencePair
from cwpo_jax.data.tokenize import PairTokenizer, TokenizedPair, TokenizedSequence, TokenizeStats
from cwpo_jax.io_utils import atomic_dir, stale_temp_dirs, write_json

KINDS = {"pairs": (TokenizedPair, ("prompt", "chosen", "rejected")),
         "sequences": (TokenizedSequence, ("prompt", "response"))}
_VERSION = "store-v1"  # bump when the layout or the tokeniser's output changes


def _encoder_hash(encoder: PairTokenizer, kind: str):
    h = hashlib.blake2b(digest_size=16)
    tok = encoder.tok
    backend = getattr(tok, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(type(tok))).encode())
    for part in (getattr(tok, "chat_template", None) or "", tok.bos_token_id, encoder.end_id,
                 encoder.max_prompt_len, encoder.max_len, encoder.max_response_len, _VERSION,
                 kind):
        h.update(repr(part).encode() + b"\0")
    return h


def _hash_prompt(h, messages) -> None:
    for m in messages:
        h.update(m["role"].encode() + b"\0" + m["content"].encode() + b"\0")


def pairs_key(encoder: PairTokenizer, pairs: Sequence[PreferencePair]) -> str:
    """Content hash of encoder.encode_pairs(pairs)'s inputs."""
    h = _encoder_hash(encoder, "pairs")
    for p in pairs:
        _hash_prompt(h, p.prompt)
        h.update(b"\1" + p.chosen.encode() + b"\0" + p.rejected.encode() + b"\2")
    return h.hexdigest()


def sequences_key(encoder: PairTokenizer, prompts, responses: Sequence[str]) -> str:
    """Content hash of encoder.encode_sequences(prompts, responses)'s inputs."""
    h = _encoder_hash(encoder, "sequences")
    for messages, response in zip(prompts, responses, strict=True):
        _hash_prompt(h, messages)
        h.update(b"\1" + response.encode() + b"\2")
    return h.hexdigest()


class TokenStore(Sequence):
    """Read-only sequence of the items of a store folder (see the module docstring), or of
    some of them (select())."""

    def __init__(self, directory: str):
        with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        self.directory = directory
        self.kind = meta["kind"]
        self.stats = TokenizeStats(**meta["stats"])
        self._item, self.fields = KINDS[self.kind]
        self._tokens, self._offsets = {}, {}
        for name in self.fields:
            tokens = np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r")
            offsets = np.load(os.path.join(directory, f"{name}_offsets.npy"))
            if (tokens.dtype != np.int32 or offsets.shape != (meta["count"] + 1,)
                    or offsets[0] != 0 or offsets[-1] != len(tokens)):
                raise ValueError(f"token store {directory}: {name} arrays do not match meta.json")
            # A plain ndarray view of the map: slicing np.memmap costs 4x more per item.
            self._tokens[name], self._offsets[name] = tokens.view(np.ndarray), offsets
        self._rows = np.arange(meta["count"])  # the store's items this view holds, in order

    @property
    def key(self) -> str:
        """The content hash the folder is named by (identical inputs, identical token ids)."""
        return os.path.basename(self.directory).split("-", 1)[1]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        r = self._rows[i]
        return self._item(*(self._tokens[f][self._offsets[f][r]:self._offsets[f][r + 1]]
                            for f in self.fields))

    def field_lengths(self, name: str) -> np.ndarray:
        """len(item.<name>) of every item [N], from the offsets (no token is read)."""
        offsets = self._offsets[name]
        return (offsets[self._rows + 1] - offsets[self._rows]).astype(np.int64)

    @property
    def lengths(self) -> np.ndarray:
        """item.length of every item [N]: prompt + the longer response of a pair, prompt +
        response of a sequence."""
        responses = [self.field_lengths(f) for f in self.fields[1:]]
        return self.field_lengths("prompt") + np.maximum.reduce(responses)

    def select(self, index) -> TokenStore:
        """The view of items [index] (item k of the view is item index[k] of this one)."""
        view = object.__new__(TokenStore)
        view.__dict__.update(self.__dict__)
        view._rows = self._rows[np.asarray(index, np.int64)]
        return view

    def __repr__(self) -> str:  # short: grain prints the partials that hold a store
        return f"TokenStore({self.kind}, {len(self)} items, {self.directory})"


def field_lengths(items: Sequence, name: str) -> np.ndarray:
    """len(item.<name>) of every item: a TokenStore's offsets, else by walking the items."""
    if isinstance(items, TokenStore):
        return items.field_lengths(name)
    return np.asarray([len(getattr(x, name)) for x in items], np.int64)


def item_lengths(items: Sequence) -> np.ndarray:
    """item.length of every item, without reading tokens when items is a TokenStore."""
    if isinstance(items, TokenStore):
        return items.lengths
    return np.asarray([x.length for x in items], np.int64)


def open_store(directory: str) -> TokenStore | None:
    """The store in directory, or None when it is missing or incomplete (a file absent or
    inconsistent with meta.json): then it must be written again."""
    try:
        return TokenStore(directory)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_store(directory: str, kind: str, items: Sequence, stats: TokenizeStats) -> None:
    """items (TokenizedPair or TokenizedSequence, as kind says) as a store folder, written into
    a temporary folder and renamed into place (io_utils.atomic_dir)."""
    with atomic_dir(directory) as tmp:
        for field in KINDS[kind][1]:
            parts = [np.asarray(getattr(x, field), np.int32) for x in items]
            sizes = np.fromiter(map(len, parts), np.int64, len(parts))
            np.save(os.path.join(tmp, f"{field}.npy"),
                    np.concatenate(parts) if parts else np.zeros(0, np.int32))
            np.save(os.path.join(tmp, f"{field}_offsets.npy"),
                    np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        write_json(os.path.join(tmp, "meta.json"),
                   {"kind": kind, "count": len(items), "stats": dataclasses.asdict(stats)})


def ensure_store(directory: str, kind: str, encode: Callable[[], list],
                 encoder: PairTokenizer) -> None:
    """Writes directory from encode() unless a complete store is there, with the part of
    encoder.stats that encode() added; removes temporary folders a killed write left."""
    if open_store(directory) is not None:
        return
    for stale in stale_temp_dirs(directory):
        shutil.rmtree(stale, ignore_errors=True)
    before = dataclasses.astuple(encoder.stats)
    items = encode()
    stats = TokenizeStats(*(a - b for a, b in zip(dataclasses.astuple(encoder.stats), before)))
    write_store(directory, kind, items, stats)


def store_dir(root: str, kind: str, key: str) -> str:
    """The folder of the store with this kind and key under root."""
    return os.path.join(root, f"{kind}-{key}")


def part_dir(directory: str, index: int, count: int) -> str:
    """The folder of slice `index` of `count` of the store in directory (merge_parts joins
    them); hidden, so it is never taken for a store."""
    parent, name = os.path.split(os.path.abspath(directory))
    return os.path.join(parent, f".{name}.part-{index}-of-{count}")


def merge_parts(directory: str, count: int) -> None:
    """The complete stores part_dir(directory, 0..count-1), consecutive slices of one item
    list, as one store in directory (the stats summed); then removes them. Streams each
    part's ids into place, so memory holds one part's offsets at a time, never the ids."""
    parts = [TokenStore(part_dir(directory, i, count)) for i in range(count)]
    kind = parts[0].kind
    for stale in stale_temp_dirs(directory):
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(directory) as tmp:
        for field in KINDS[kind][1]:
            tokens = [p._tokens[field] for p in parts]
            starts = np.cumsum([0] + [len(t) for t in tokens])
            with open(os.path.join(tmp, f"{field}.npy"), "wb") as f:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)),
                          "fortran_order": False, "shape": (int(starts[-1]),)}
                np.lib.format.write_array_header_1_0(f, header)
                for t in tokens:
                    f.write(memoryview(np.ascontiguousarray(t)).cast("B"))
            offsets = [p._offsets[field][1:] + start for p, start in zip(parts, starts)]
            np.save(os.path.join(tmp, f"{field}_offsets.npy"),
                    np.concatenate([np.zeros(1, np.int64), *offsets]))
        stats = TokenizeStats(*np.sum([dataclasses.astuple(p.stats) for p in parts], 0).tolist())
        write_json(os.path.join(tmp, "meta.json"),
                   {"kind": kind, "count": sum(len(p) for p in parts),
                    "stats": dataclasses.asdict(stats)})
    for i in range(count):
        shutil.rmtree(part_dir(directory, i, count), ignore_errors=True)
