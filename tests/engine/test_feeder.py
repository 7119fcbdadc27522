"""train_batches: the stream of plan_batches over epochs 0, 1, ... in steps of A micro-batches,
through grain's worker threads, and exact resume from its state."""
import functools

import numpy as np
import pytest

from cwpo_jax.data.batching import (
    collate_packed_pairs,
    collate_pairs,
    collate_sequences,
    plan_batches,
)
from cwpo_jax.data.tokenize import TokenizedSequence
from cwpo_jax.train.feeder import add_valid, count_tokens, stack_micro_batches, train_batches

from tests.engine.toy import tokenized_pairs

ITEMS = tokenized_pairs(11)  # 11 pairs, batches of 3: a short padded batch ends every epoch
LENGTHS = [p.length for p in ITEMS]
collate = functools.partial(collate_pairs, ITEMS, batch_size=3, buckets=(8, 16), pad_id=0)


def reference_steps(num_steps, micro, seed):
    """The plan's batches epoch after epoch, A per step (what the loop consumed before grain)."""
    stream = [index for epoch in range(num_steps * micro)
              for index in plan_batches(LENGTHS, 3, seed=seed, epoch=epoch)]
    batches = [add_valid(collate(index)) for index in stream[:num_steps * micro]]
    return [stack_micro_batches(batches[s * micro:(s + 1) * micro]) for s in range(num_steps)]


def assert_same(got, want):
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("micro", [1, 3])
def test_steps_follow_the_plan_across_epochs(micro):
    num_steps = 7  # 4 batches per epoch: the steps cross epoch boundaries
    got = list(train_batches(LENGTHS, collate, batch_size=3, num_steps=num_steps,
                             micro_batches=micro, seed=5))
    want = reference_steps(num_steps, micro, seed=5)
    assert len(got) == num_steps
    for g, w in zip(got, want):
        assert_same(g, w)
    assert got[0]["input_ids"].shape[0] == micro
    assert any((g["valid"] == 0).any() for g in got)  # the padded last batch of an epoch


def test_resume_from_state_continues_with_the_next_step():
    it = train_batches(LENGTHS, collate, batch_size=3, num_steps=9, micro_batches=2, seed=1)
    want = list(it)
    first = train_batches(LENGTHS, collate, batch_size=3, num_steps=9, micro_batches=2, seed=1)
    for _ in range(4):
        next(first)
    state = first.get_state()
    resumed = train_batches(LENGTHS, collate, batch_size=3, num_steps=9, micro_batches=2, seed=1)
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == 5
    for g, w in zip(rest, want[4:]):
        assert_same(g, w)


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty"):
        train_batches([], collate, batch_size=3, num_steps=1)


SHARD_COLLATES = {
    "pairs": (LENGTHS, functools.partial(collate_pairs, ITEMS, batch_size=6, buckets=(8, 16),
                                         pad_id=0)),
    "packed pairs": ([len(p.prompt) + len(p.chosen) + len(p.rejected) for p in ITEMS],
                     functools.partial(collate_packed_pairs, ITEMS, batch_size=6,
                                       buckets=(8, 16, 24), response_len=8, pad_id=0)),
    "sequences": (LENGTHS, functools.partial(
        collate_sequences, [TokenizedSequence(p.prompt, p.chosen) for p in ITEMS],
        batch_size=6, buckets=(8, 16), pad_id=0)),
}


@pytest.mark.parametrize("hosts", [2, 3])
@pytest.mark.parametrize("layout", SHARD_COLLATES)
def test_token_counts_of_the_processes_sum_to_the_global_count(layout, hosts):
    """What the loop sums over processes (count_tokens of each one's rows of every step)
    equals the count of the global batches a single process reads."""
    lengths, collate = SHARD_COLLATES[layout]
    kw = dict(batch_size=6, num_steps=5, micro_batches=2, seed=3)
    whole = [count_tokens(b) for b in train_batches(lengths, collate, **kw)]
    parts = [[count_tokens(b) for b in train_batches(lengths, collate, shard=(h, hosts), **kw)]
             for h in range(hosts)]
    assert whole[0][0] > 0
    for step, total in enumerate(whole):
        assert tuple(np.sum([p[step] for p in parts], axis=0)) == total, step
