"""Token ids -> fixed-shape numpy batches, and the batch order (length-grouped, seeded).

Shapes are static: the batch size is fixed and the length T is the smallest bucket that fits
the longest row, so jit compiles one program per bucket. A short last batch is filled with
padding rows (pair_index / index -1, weight 0, masks 0) rather than dropped or reshaped.

Pair batch   input_ids [2B, T] int32, attention_mask [2B, T] int32, response_mask [2B, T] int32,
             pair_index [B] int32, weights [B] float32. Rows [:B] chosen, [B:] rejected of the
             same pairs, right-padded. The trainer scores logits[:, :-1] against input_ids[:, 1:]
             with response_mask[:, 1:].
Packed pair  input_ids / attention_mask / positions / segment_ids [B, L]: one row per pair,
             prompt + first response + second response + padding (prefix sharing: the prompt is
             run once). segment_ids 0 prompt, 1 chosen, 2 rejected; positions restart after the
             prompt for each response. response_ids / response_mask / response_source [2B, R]:
             the response tokens of rows [:B] chosen, [B:] rejected, and the packed slot whose
             hidden state predicts each (the previous token of the same response, or the last
             prompt token), so only response positions go through the LM head. pair_index and
             weights as above. With a shared prefix (the tokens most prompts start with, e.g.
             a chat template's system prompt) the rows whose prompt starts with it hold the
             prompt without it and their positions start after it; prefix_ids [B, P] (the same
             P tokens in every row) run once per batch (train.tasks.packed_hidden) and
             prefix_rows [B] (1 = the row continues the prefix) says which rows attend to them.
Packed seqs  input_ids / attention_mask / positions / segment_ids [B, L]: whole sequences
             (e.g. prompt + one response, for scoring) packed end to end into rows of L slots,
             so no position is padding except each row's tail. segment_ids 1..S number a row's
             sequences (0 = padding); positions restart at 0 for each. sequence_index [B, S]: the
             item in each segment (-1 = none); row_index [B] (-1 for padding rows).
Sequence     input_ids / attention_mask / response_mask [B, T], index [B], weights [B].
Prompt       input_ids / attention_mask [B, T] left-padded (generation appends on the right),
             index [B].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from cwpo_jax.data.tokenize import TokenizedPair, TokenizedSequence


def default_buckets(max_len: int, n: int = 4, multiple: int = 8) -> tuple[int, ...]:
    """n lengths halving down from max_len, each rounded up to a multiple of `multiple`."""
    out = {max_len}
    for k in range(1, n):
        b = -(-(max_len >> k) // multiple) * multiple
        if b > 0:
            out.add(b)
    return tuple(sorted(out))


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(
        f"sequence of {length} tokens exceeds the largest bucket {max(buckets)}; "
        "make the tokenizer's max_len no larger than the largest bucket"
    )


def _check_alignment(name: str, arr, n: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}, expected ({n},): one value per pair")
    return arr


def _select(items, index, batch_size: int, unit: str):
    """(index as int64, the selected items), refusing more than batch_size of them."""
    index = np.asarray(index, np.int64)
    if len(index) > batch_size:
        raise ValueError(f"{len(index)} {unit} for a batch of {batch_size}")
    return index, [items[i] for i in index]


def _host_rows(index: np.ndarray, sel: list, batch_size: int, shard: tuple[int, int]):
    """(index, sel, rows) of this host's share of a global batch of batch_size rows: rows
    [i*B/n, (i+1)*B/n) for shard (i, n) (data/loader, sharding.process_block)."""
    host, hosts = shard
    if not 0 <= host < hosts or batch_size % hosts:
        raise ValueError(f"shard {shard}: need 0 <= index < count and the batch size "
                         f"({batch_size}) divisible by the count")
    rows = batch_size // hosts
    mine = slice(host * rows, (host + 1) * rows)
    return index[mine], sel[mine], rows


def _ordered(pair: TokenizedPair, i: int, swap) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) response of pair i: chosen first unless swap[i]."""
    if swap is not None and swap[i]:
        return pair.rejected, pair.chosen
    return pair.chosen, pair.rejected


def _index_and_weights(index, batch_size: int, weights) -> tuple[np.ndarray, np.ndarray]:
    """Item index [B] (-1 for padding rows) and weights [B] (0 for padding rows)."""
    pidx = np.full((batch_size,), -1, np.int32)
    w = np.zeros((batch_size,), np.float32)
    pidx[:len(index)] = index
    w[:len(index)] = 1.0 if weights is None else np.asarray(weights)[index]
    return pidx, w


def collate_pairs(
    items: Sequence[TokenizedPair],
    index: Sequence[int],
    *,
    batch_size: int,
    buckets: Sequence[int],
    pad_id: int,
    swap: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, np.ndarray]:
    """Stacks chosen rows then rejected rows of the pairs items[index].

    swap[i] True exchanges chosen and rejected of pair i (weak labels that disagree with the
    stored order); weights[i] is its loss weight (confidence). Both are indexed like `items`.
    shard (i, n): only pairs [i*B/n, (i+1)*B/n) of the global batch, B/n of them, at the global
    batch's length (so the n hosts' rows form one global batch).
    """
    index, sel = _select(items, index, batch_size, "pairs")
    longest = max((p.length for p in sel), default=1)
    t = bucket_length(longest, buckets)
    index, sel, b = _host_rows(index, sel, batch_size, shard)
    ids = np.full((2 * b, t), pad_id, np.int32)
    attn = np.zeros((2 * b, t), np.int32)
    resp = np.zeros((2 * b, t), np.int32)
    for row, (i, p) in enumerate(zip(index, sel)):
        n_p = len(p.prompt)
        for r, response in zip((row, b + row), _ordered(p, i, swap)):
            n = n_p + len(response)
            ids[r, :n_p] = p.prompt
            ids[r, n_p:n] = response
            attn[r, :n] = 1
            resp[r, n_p:n] = 1
    pidx, w = _index_and_weights(index, b, weights)
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "response_mask": resp,
        "pair_index": pidx,
        "weights": w,
    }


def collate_packed_pairs(
    items: Sequence[TokenizedPair],
    index: Sequence[int],
    *,
    batch_size: int,
    buckets: Sequence[int],
    response_len: int,
    pad_id: int,
    swap: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    shard: tuple[int, int] = (0, 1),
    prefix: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Packed rows (see the module docstring); swap, weights and shard as in collate_pairs.

    L is the smallest bucket that fits the longest prompt + chosen + rejected; response_len R is
    fixed by the caller (the longest response of the dataset) so it adds no compiled shapes.
    prefix: tokens most prompts start with (shared_prefix), left out of the rows that start
    with them; other rows keep their whole prompt.
    """
    n_prefix = 0 if prefix is None else len(prefix)
    index, sel = _select(items, index, batch_size, "pairs")
    longest = max((len(p.prompt) - n_prefix * starts_with(p.prompt, prefix) + len(p.chosen)
                   + len(p.rejected) for p in sel), default=1)
    t = bucket_length(longest, buckets)
    index, sel, b = _host_rows(index, sel, batch_size, shard)
    r = response_len
    ids = np.full((b, t), pad_id, np.int32)
    attn = np.zeros((b, t), np.int32)
    pos = np.zeros((b, t), np.int32)
    seg = np.zeros((b, t), np.int32)
    resp_ids = np.full((2 * b, r), pad_id, np.int32)
    resp_mask = np.zeros((2 * b, r), np.int32)
    resp_src = np.zeros((2 * b, r), np.int32)
    prefix_rows = np.zeros(b, np.int32)
    for row, (i, p) in enumerate(zip(index, sel)):
        prompt = p.prompt
        shift = 0
        if starts_with(prompt, prefix):
            prefix_rows[row], shift, prompt = 1, n_prefix, prompt[n_prefix:]
        n_p = len(prompt)
        if n_p == 0:
            raise ValueError(f"pair {i} has an empty prompt; packed rows need a prompt token "
                             "to predict each response's first token")
        ids[row, :n_p] = prompt
        pos[row, :n_p] = shift + np.arange(n_p)
        start = n_p
        for k, (out_row, response) in enumerate(zip((row, b + row), _ordered(p, i, swap))):
            n = len(response)
            if n > r:
                raise ValueError(f"pair {i} has a {n}-token response; response_len is {r}")
            slots = np.arange(start, start + n)
            ids[row, slots] = response
            pos[row, slots] = shift + n_p + np.arange(n)
            seg[row, slots] = k + 1
            resp_ids[out_row, :n] = response
            resp_mask[out_row, :n] = 1
            # The first response token is predicted by the last prompt token, the others by
            # the previous token of the same response.
            resp_src[out_row, :n] = np.concatenate([[n_p - 1], slots[:-1]]) if n else slots
            start += n
        attn[row, :start] = 1
    pidx, w = _index_and_weights(index, b, weights)
    out = {
        "input_ids": ids,
        "attention_mask": attn,
        "positions": pos,
        "segment_ids": seg,
        "response_ids": resp_ids,
        "response_mask": resp_mask,
        "response_source": resp_src,
        "pair_index": pidx,
        "weights": w,
    }
    if n_prefix:
        # One copy per row so the key shards over the batch axis like every other.
        out["prefix_ids"] = np.tile(np.asarray(prefix, np.int32), (b, 1))
        out["prefix_rows"] = prefix_rows
    return out


def starts_with(prompt: np.ndarray, prefix: np.ndarray | None) -> bool:
    """Whether the prompt continues the prefix with at least one token of its own (the last
    prompt token predicts the first response token)."""
    n = 0 if prefix is None else len(prefix)
    return bool(n) and len(prompt) > n and np.array_equal(prompt[:n], prefix)


def shared_prefix(items: Sequence[TokenizedPair], *, min_length: int = 8) -> np.ndarray:
    """The longest run of tokens that at least half of the prompts start with (e.g. a chat
    template's system prompt; prompts truncated from the left lose it), each of those prompts
    keeping one token of its own. Empty when shorter than min_length, where a separate pass is
    not worth it."""
    # Prompts long enough to keep a token after min_length, keyed by their first min_length.
    long = [(tuple(p.prompt[:min_length].tolist()), p.prompt)
            for p in (items[i] for i in range(len(items))) if len(p.prompt) > min_length]
    if not long:
        return np.zeros(0, np.int32)
    (head, count), = Counter(h for h, _ in long).most_common(1)
    if 2 * count < len(items):
        return np.zeros(0, np.int32)
    members = [prompt for h, prompt in long if h == head]
    first = np.asarray(members[0])
    n = len(first) - 1
    for prompt in members[1:]:
        n = min(n, len(prompt) - 1)
        differ = np.flatnonzero(prompt[:n] != first[:n])
        if differ.size:
            n = int(differ[0])
    return np.array(first[:n], np.int32)


def pack_rows(lengths: Sequence[int], *, row_len: int, max_segments: int) -> list[np.ndarray]:
    """Item indices per row, packing items of the given lengths into rows of row_len slots with
    at most max_segments items each (best fit, longest first). A pure function of its inputs;
    every item lands in exactly one row."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and lengths.max() > row_len:
        worst = int(np.argmax(lengths))
        raise ValueError(f"item {worst} has {lengths[worst]} tokens; rows hold {row_len}")
    if len(lengths) and lengths.min() < 1:
        raise ValueError(f"item {int(np.argmin(lengths))} is empty; packed rows need tokens")
    # Best fit, longest first: each item goes to the open row with the least room that still
    # holds it. open_rows[c] lists rows with c free slots and a free segment; `have` counts them
    # so the search for the smallest c >= length is one vectorised scan.
    open_rows: list[list[int]] = [[] for _ in range(row_len + 1)]
    have = np.zeros(row_len + 1, np.int64)
    rows: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        room = have[n:] > 0
        if room.any():
            free = n + int(np.argmax(room))
            r = open_rows[free].pop()
            have[free] -= 1
        else:
            r, free = len(rows), row_len
            rows.append([])
        rows[r].append(int(i))
        free -= n
        if free > 0 and len(rows[r]) < max_segments:
            open_rows[free].append(r)
            have[free] += 1
    return [np.asarray(r, np.int64) for r in rows]


class PairSequences(Sequence):
    """prompt + chosen of every pair, then prompt + rejected: item k < N is pair k's chosen
    sequence, item N + k its rejected one. Lazy: an item is built when a batch reads it, so
    the token ids stay where `items` keeps them (a token store maps them from disk)."""

    def __init__(self, items: Sequence[TokenizedPair]):
        self.items = items

    def __len__(self) -> int:
        return 2 * len(self.items)

    def __getitem__(self, k: int) -> np.ndarray:
        n = len(self.items)
        if not -2 * n <= k < 2 * n:
            raise IndexError(k)
        p = self.items[k % n]
        return np.concatenate([p.prompt, p.chosen if k % (2 * n) < n else p.rejected])


def pair_sequences(items: Sequence[TokenizedPair]) -> PairSequences:
    """The sequences of the packed scoring pass (PairSequences)."""
    return PairSequences(items)


def collate_packed_sequences(
    sequences: Sequence[np.ndarray],
    rows: Sequence[np.ndarray],
    index: Sequence[int],
    *,
    batch_size: int,
    row_len: int,
    max_segments: int,
    pad_id: int,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, np.ndarray]:
    """Rows rows[index] of packed sequences (see the module docstring; rows from pack_rows);
    shard as in collate_pairs."""
    index, sel = _select(rows, index, batch_size, "rows")
    index, sel, b = _host_rows(index, sel, batch_size, shard)
    ids = np.full((b, row_len), pad_id, np.int32)
    attn = np.zeros((b, row_len), np.int32)
    pos = np.zeros((b, row_len), np.int32)
    seg = np.zeros((b, row_len), np.int32)
    seq_index = np.full((b, max_segments), -1, np.int32)
    for row, members in enumerate(sel):
        if len(members) > max_segments:
            raise ValueError(f"row {index[row]} holds {len(members)} sequences; max_segments "
                             f"is {max_segments}")
        start = 0
        for k, item in enumerate(members):
            tokens = sequences[item]
            end = start + len(tokens)
            if end > row_len:
                raise ValueError(f"row {index[row]} needs {end} slots; row_len is {row_len}")
            ids[row, start:end] = tokens
            pos[row, start:end] = np.arange(len(tokens))
            seg[row, start:end] = k + 1
            seq_index[row, k] = item
            start = end
        attn[row, :start] = 1
    row_index = np.full((b,), -1, np.int32)
    row_index[:len(index)] = index
    return {"input_ids": ids, "attention_mask": attn, "positions": pos, "segment_ids": seg,
            "sequence_index": seq_index, "row_index": row_index}


def collate_sequences(
    items: Sequence[TokenizedSequence],
    index: Sequence[int],
    *,
    batch_size: int,
    buckets: Sequence[int],
    pad_id: int,
    weights: np.ndarray | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, np.ndarray]:
    """Right-padded prompt + response rows (SFT, scoring); shard as in collate_pairs."""
    index, sel = _select(items, index, batch_size, "sequences")
    t = bucket_length(max((s.length for s in sel), default=1), buckets)
    index, sel, batch_size = _host_rows(index, sel, batch_size, shard)
    ids = np.full((batch_size, t), pad_id, np.int32)
    attn = np.zeros((batch_size, t), np.int32)
    resp = np.zeros((batch_size, t), np.int32)
    for row, s in enumerate(sel):
        n_p, n = len(s.prompt), s.length
        ids[row, :n_p] = s.prompt
        ids[row, n_p:n] = s.response
        attn[row, :n] = 1
        resp[row, n_p:n] = 1
    idx, w = _index_and_weights(index, batch_size, weights)
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "response_mask": resp,
        "index": idx,
        "weights": w,
    }


def collate_prompts(
    items: Sequence[TokenizedSequence],
    index: Sequence[int],
    *,
    batch_size: int,
    buckets: Sequence[int],
    pad_id: int,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, np.ndarray]:
    """Left-padded prompts for sampling: the last column is every prompt's last token; shard
    as in collate_pairs."""
    index, sel = _select(items, index, batch_size, "prompts")
    t = bucket_length(max((len(s.prompt) for s in sel), default=1), buckets)
    index, sel, batch_size = _host_rows(index, sel, batch_size, shard)
    ids = np.full((batch_size, t), pad_id, np.int32)
    attn = np.zeros((batch_size, t), np.int32)
    idx = np.full((batch_size,), -1, np.int32)
    for row, (i, s) in enumerate(zip(index, sel)):
        n = len(s.prompt)
        if n:
            ids[row, t - n :] = s.prompt
            attn[row, t - n :] = 1
        idx[row] = i
    return {"input_ids": ids, "attention_mask": attn, "index": idx}


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    window: int = 32,
    drop_remainder: bool = False,
) -> list[np.ndarray]:
    """Batches of item indices for one epoch; a pure function of its arguments.

    shuffle=True: permute with (seed, epoch), sort each window of `window` batches by length so
      rows of similar length share a batch (little padding), then shuffle the batch order.
    shuffle=False: sort everything by length (stable) and cut; for scoring/eval passes, whose
      results go back to their pairs through pair_index / index.
    drop_remainder: drop the one short batch instead of padding it with empty rows.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(n)
        span = max(1, window) * batch_size
        order = (
            np.concatenate(
                [
                    perm[s : s + span][np.argsort(lengths[perm[s : s + span]], kind="stable")]
                    for s in range(0, n, span)
                ]
            )
            if n
            else perm
        )
    else:
        order = np.argsort(lengths, kind="stable")
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if drop_remainder and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padding_share(batches: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Share of token slots that are padding, over all rows (padding rows included)."""
    total = sum(b["attention_mask"].size for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 0.0 if total == 0 else 1.0 - real / total
