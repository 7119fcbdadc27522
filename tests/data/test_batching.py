"""Batch layout, masks, swap/weights hook, padding rows, buckets and the batch plan."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cwpo_jax.data.batching import (
    bucket_length,
    collate_packed_sequences,
    collate_pairs,
    collate_prompts,
    collate_sequences,
    default_buckets,
    pack_rows,
    padding_share,
    pair_sequences,
    plan_batches,
)
from cwpo_jax.data.tokenize import TokenizedPair, TokenizedSequence

PAD = 0


def ids(*xs):
    return np.asarray(xs, np.int32)


ITEMS = [
    TokenizedPair(ids(1, 2, 3), ids(10, 11), ids(20)),
    TokenizedPair(ids(4), ids(12, 13, 14, 15), ids(21, 22)),
    TokenizedPair(ids(5, 6), ids(16), ids(23, 24, 25)),
]


def test_pair_batch_layout():
    b = collate_pairs(ITEMS, [2, 0], batch_size=3, buckets=(4, 8), pad_id=PAD)
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "input_ids": ((6, 8), np.int32),
        "attention_mask": ((6, 8), np.int32),
        "response_mask": ((6, 8), np.int32),
        "pair_index": ((3,), np.int32),
        "weights": ((3,), np.float32),
    }
    np.testing.assert_array_equal(
        b["input_ids"],
        [
            [5, 6, 16, 0, 0, 0, 0, 0],  # pair 2 chosen
            [1, 2, 3, 10, 11, 0, 0, 0],  # pair 0 chosen
            [0] * 8,  # padding row
            [5, 6, 23, 24, 25, 0, 0, 0],  # pair 2 rejected
            [1, 2, 3, 20, 0, 0, 0, 0],  # pair 0 rejected
            [0] * 8,
        ],
    )
    np.testing.assert_array_equal(
        b["attention_mask"][:, :6],
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0],
            [0] * 6,
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0, 0],
            [0] * 6,
        ],
    )
    np.testing.assert_array_equal(
        b["response_mask"][:, :6],
        [
            [0, 0, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0] * 6,
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 1, 0, 0],
            [0] * 6,
        ],
    )
    np.testing.assert_array_equal(b["pair_index"], [2, 0, -1])
    np.testing.assert_array_equal(b["weights"], [1, 1, 0])


def test_swap_and_weights_follow_the_pair_not_the_row():
    swap = np.array([False, True, False])
    w = np.array([0.1, 0.5, 0.9], np.float32)
    b = collate_pairs(ITEMS, [1, 0], batch_size=2, buckets=(8,), pad_id=PAD, swap=swap, weights=w)
    np.testing.assert_array_equal(b["input_ids"][0, :3], [4, 21, 22])  # pair 1 swapped
    np.testing.assert_array_equal(b["input_ids"][2, :5], [4, 12, 13, 14, 15])
    np.testing.assert_array_equal(b["input_ids"][1, :5], [1, 2, 3, 10, 11])  # pair 0 as stored
    np.testing.assert_allclose(b["weights"], [0.5, 0.1])


def test_sequence_and_prompt_batches():
    seqs = [TokenizedSequence(ids(1, 2), ids(3)), TokenizedSequence(ids(4, 5, 6), ids())]
    b = collate_sequences(seqs, [0, 1], batch_size=2, buckets=(4,), pad_id=9)
    np.testing.assert_array_equal(b["input_ids"], [[1, 2, 3, 9], [4, 5, 6, 9]])
    np.testing.assert_array_equal(b["response_mask"], [[0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(b["index"], [0, 1])
    p = collate_prompts(seqs, [1, 0], batch_size=3, buckets=(4, 8), pad_id=9)
    np.testing.assert_array_equal(p["input_ids"], [[9, 4, 5, 6], [9, 9, 1, 2], [9, 9, 9, 9]])
    np.testing.assert_array_equal(p["attention_mask"], [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(p["index"], [1, 0, -1])


def test_buckets():
    assert default_buckets(512) == (64, 128, 256, 512)
    assert default_buckets(100, n=3) == (32, 56, 100)
    assert bucket_length(65, (64, 128)) == 128 and bucket_length(64, (64, 128)) == 64
    with pytest.raises(ValueError, match="exceeds the largest bucket 128"):
        bucket_length(129, (64, 128))
    with pytest.raises(ValueError, match="3 pairs for a batch of 2"):
        collate_pairs(ITEMS, [0, 1, 2], batch_size=2, buckets=(8,), pad_id=PAD)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 300), max_size=120),
    st.integers(1, 16),
    st.integers(0, 99),
    st.integers(0, 5),
    st.booleans(),
    st.booleans(),
    st.integers(1, 8),
)
def test_plan_covers_each_item_once(lengths, bs, seed, epoch, shuffle, drop, window):
    plan = plan_batches(
        lengths, bs, seed=seed, epoch=epoch, shuffle=shuffle, window=window, drop_remainder=drop
    )
    flat = np.concatenate(plan) if plan else np.zeros(0, int)
    n = len(lengths)
    assert sum(len(b) < bs for b in plan) <= (0 if drop else 1)
    if drop:
        assert len(flat) == n - n % bs and len(set(flat.tolist())) == len(flat)
    else:
        assert sorted(flat.tolist()) == list(range(n))
    again = plan_batches(
        lengths, bs, seed=seed, epoch=epoch, shuffle=shuffle, window=window, drop_remainder=drop
    )
    assert all(np.array_equal(a, b) for a, b in zip(plan, again))


def test_plan_epochs_differ_and_grouping_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, 512)
    items = [
        TokenizedPair(
            np.ones(n // 2, np.int32), np.ones(n - n // 2, np.int32), np.ones(1, np.int32)
        )
        for n in lengths
    ]
    e0 = plan_batches(lengths, 16, seed=1, epoch=0)
    e1 = plan_batches(lengths, 16, seed=1, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(e0, e1))

    def share(plan):
        return padding_share(
            [
                collate_pairs(items, ix, batch_size=16, buckets=default_buckets(512), pad_id=0)
                for ix in plan
            ]
        )

    grouped = share(e0)
    random = share(plan_batches(lengths, 16, seed=1, epoch=0, window=1))
    assert grouped < random - 0.15, (grouped, random)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), max_size=200), st.integers(64, 130), st.integers(1, 9))
def test_pack_rows_places_every_item_once_within_limits(lengths, row_len, max_segments):
    rows = pack_rows(lengths, row_len=row_len, max_segments=max_segments)
    flat = np.concatenate(rows) if rows else np.zeros(0, int)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    lengths = np.asarray(lengths, int)
    for row in rows:
        assert 1 <= len(row) <= max_segments and lengths[row].sum() <= row_len
    # Best fit never opens a row that an earlier row could have taken: at most one row is
    # at most half full (two such rows would have merged), unless the segment limit binds.
    half_empty = [r for r in rows if lengths[r].sum() <= row_len // 2 and len(r) < max_segments]
    assert len(half_empty) <= 1
    again = pack_rows(lengths, row_len=row_len, max_segments=max_segments)
    assert all(np.array_equal(a, b) for a, b in zip(rows, again))


def test_pack_rows_refuses_items_that_cannot_fit():
    with pytest.raises(ValueError, match="item 1 has 9 tokens; rows hold 8"):
        pack_rows([3, 9], row_len=8, max_segments=4)
    with pytest.raises(ValueError, match="item 0 is empty"):
        pack_rows([0, 3], row_len=8, max_segments=4)


def test_packed_sequence_batch_layout():
    sequences = pair_sequences(ITEMS)  # 0..2 prompt + chosen, 3..5 prompt + rejected
    assert [len(s) for s in sequences] == [5, 5, 3, 4, 3, 5]
    np.testing.assert_array_equal(sequences[4], ids(4, 21, 22))
    rows = [np.array([0, 2]), np.array([5, 4]), np.array([1, 3])]
    b = collate_packed_sequences(sequences, rows, [1, 2], batch_size=3, row_len=9,
                                 max_segments=3, pad_id=PAD)
    np.testing.assert_array_equal(b["input_ids"][0], ids(5, 6, 23, 24, 25, 4, 21, 22, PAD))
    np.testing.assert_array_equal(b["positions"][0], ids(0, 1, 2, 3, 4, 0, 1, 2, 0))
    np.testing.assert_array_equal(b["segment_ids"][0], ids(1, 1, 1, 1, 1, 2, 2, 2, 0))
    np.testing.assert_array_equal(b["attention_mask"][0], ids(1, 1, 1, 1, 1, 1, 1, 1, 0))
    np.testing.assert_array_equal(b["sequence_index"], [[5, 4, -1], [1, 3, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(b["row_index"], [1, 2, -1])
    assert b["attention_mask"][2].sum() == 0  # the padding row
    with pytest.raises(ValueError, match="row 0 needs 10 slots; row_len is 9"):
        collate_packed_sequences(sequences, [np.array([0, 1])], [0], batch_size=1, row_len=9,
                                 max_segments=3, pad_id=PAD)
    with pytest.raises(ValueError, match="row 0 holds 3 sequences; max_segments is 2"):
        collate_packed_sequences(sequences, [np.array([2, 4, 3])], [0], batch_size=1,
                                 row_len=12, max_segments=2, pad_id=PAD)
