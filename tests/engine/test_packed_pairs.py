"""Packed pair rows (prefix sharing + response-only LM head) against chosen-over-rejected rows."""
import functools
import os

import jax
import numpy as np
import pytest
from flax import nnx

from cwpo_jax import losses, models
from cwpo_jax.data import TokenizedPair, collate_packed_pairs, collate_pairs, shared_prefix
from cwpo_jax.train import tasks

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "models", "fixtures")


def random_pairs(n, vocab, seed=0, max_prompt=9, max_response=7):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lens = rng.integers(1, max_prompt + 1), rng.integers(0, max_response + 1), \
            rng.integers(1, max_response + 1)
        p, c, r = (rng.integers(1, vocab, n).astype(np.int32) for n in lens)
        out.append(TokenizedPair(p, c, r))
    return out


def both_layouts(pairs, index, *, batch_size=4, swap=None, weights=None):
    common = dict(batch_size=batch_size, pad_id=0, swap=swap, weights=weights)
    plain = collate_pairs(pairs, index, buckets=(8, 16, 32), **common)
    packed = collate_packed_pairs(pairs, index, buckets=(16, 32, 48), response_len=8, **common)
    return plain, packed


def jitted(fn, model, **kw):
    """fn(model, batch, **kw) as one compiled program (eager dispatch of every op is slow)."""
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda st, batch: fn(nnx.merge(graphdef, st), batch, **kw))
    return lambda batch: run(state, batch)


@pytest.fixture(scope="module", params=["llama", "qwen2", "opt"])
def model(request):
    return models.from_pretrained(os.path.join(FIXTURES, request.param))


def test_packed_logprobs_equal_separate_rows(model):
    pairs = random_pairs(7, model.config.vocab_size)
    swap = np.array([0, 1, 0, 1, 1, 0, 0], bool)
    plain, packed = both_layouts(pairs, [0, 2, 5], swap=swap)
    for chunk in (0, 4):
        want, want_n = jitted(tasks.response_logprobs, model, chunk_size=chunk)(plain)
        got, got_n = jitted(tasks.packed_response_logprobs, model, chunk_size=chunk)(packed)
        np.testing.assert_array_equal(np.asarray(got_n), np.asarray(want_n))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-4)
    # The padding pair (4th row) contributes nothing.
    assert float(got_n[3]) == 0.0 and float(got_n[7]) == 0.0


def test_packed_preference_loss_and_gradients_match(model):
    pairs = random_pairs(4, model.config.vocab_size, seed=3)
    weights = np.array([1.0, 0.2, 0.7, 0.0], np.float32)
    plain, packed = both_layouts(pairs, [0, 1, 2, 3], weights=weights)
    ref = np.random.default_rng(1).normal(-30, 3, 8).astype(np.float32)
    extra = {"ref_logps": ref, "valid": np.ones(4, np.float32)}
    task = functools.partial(tasks.preference_task, pair_loss=losses.pair_loss_fn("dpo", beta=0.5),
                             beta=0.5)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, batch):
        num, den, _ = task(nnx.merge(graphdef, params, rest), batch)
        return num / den

    grad = jax.jit(jax.value_and_grad(loss))  # eager dispatch of every op took minutes
    want, want_g = grad(params, {**plain, **extra})
    got, got_g = grad(params, {**packed, **extra})
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-3, atol=1e-6)


def test_rejected_tokens_do_not_see_chosen(model):
    """Changing the chosen response must not change the rejected response's log-probs."""
    pairs = random_pairs(2, model.config.vocab_size, seed=5)
    other = [TokenizedPair(p.prompt, (p.chosen + 1) % model.config.vocab_size, p.rejected)
             for p in pairs]
    _, a = both_layouts(pairs, [0, 1], batch_size=2)
    _, b = both_layouts(other, [0, 1], batch_size=2)
    run = jitted(tasks.packed_response_logprobs, model)
    la, _ = run(a)
    lb, _ = run(b)
    np.testing.assert_array_equal(np.asarray(la)[2:], np.asarray(lb)[2:])


def test_packed_layout_fields():
    p = TokenizedPair(np.array([5, 6, 7], np.int32), np.array([8, 9], np.int32),
                      np.array([10], np.int32))
    b = collate_packed_pairs([p], [0], batch_size=2, buckets=(8,), response_len=4, pad_id=0,
                             swap=np.array([True]))
    # Swapped: the stored rejected response comes first.
    np.testing.assert_array_equal(b["input_ids"][0], [5, 6, 7, 10, 8, 9, 0, 0])
    np.testing.assert_array_equal(b["segment_ids"][0], [0, 0, 0, 1, 2, 2, 0, 0])
    np.testing.assert_array_equal(b["positions"][0], [0, 1, 2, 3, 3, 4, 0, 0])
    np.testing.assert_array_equal(b["attention_mask"][0], [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(b["response_ids"][[0, 2]], [[10, 0, 0, 0], [8, 9, 0, 0]])
    np.testing.assert_array_equal(b["response_source"][[0, 2]], [[2, 0, 0, 0], [2, 4, 0, 0]])
    np.testing.assert_array_equal(b["pair_index"], [0, -1])


def test_packed_refusals():
    long = TokenizedPair(np.array([1], np.int32), np.arange(1, 6, dtype=np.int32),
                         np.array([2], np.int32))
    with pytest.raises(ValueError, match="5-token response; response_len is 4"):
        collate_packed_pairs([long], [0], batch_size=1, buckets=(16,), response_len=4, pad_id=0)
    empty = TokenizedPair(np.zeros(0, np.int32), np.array([1], np.int32), np.array([2], np.int32))
    with pytest.raises(ValueError, match="empty prompt"):
        collate_packed_pairs([empty], [0], batch_size=1, buckets=(16,), response_len=4, pad_id=0)
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        collate_packed_pairs([long], [0], batch_size=1, buckets=(4,), response_len=8, pad_id=0)


def with_system_prompt(pairs, prefix):
    return [TokenizedPair(np.concatenate([prefix, p.prompt]), p.chosen, p.rejected) for p in pairs]


def prefix_layouts(pairs, index, *, weights=None):
    """Packed rows holding the whole prompt, and packed rows leaving the shared prefix to one
    pass per batch."""
    common = dict(batch_size=4, pad_id=0, buckets=tuple(range(8, 49, 8)), response_len=8,
                  weights=weights)
    prefix = shared_prefix(pairs)
    assert len(prefix) >= 8
    return (collate_packed_pairs(pairs, index, **common),
            collate_packed_pairs(pairs, index, prefix=prefix, **common))


def test_shared_prefix_logprobs_and_gradients_equal_whole_rows(model):
    prefix = np.random.default_rng(9).integers(1, model.config.vocab_size, 11).astype(np.int32)
    # Pair 2 lacks the system prompt (as a prompt truncated from the left does): its row keeps
    # its whole prompt and must not see the prefix.
    pairs = random_pairs(5, model.config.vocab_size, seed=4)
    pairs = [p if i == 2 else with_system_prompt([p], prefix)[0] for i, p in enumerate(pairs)]
    whole, shared = prefix_layouts(pairs, [0, 1, 2, 4])
    np.testing.assert_array_equal(shared["prefix_ids"][2], prefix)
    np.testing.assert_array_equal(shared["prefix_rows"], [1, 1, 0, 1])
    assert shared["input_ids"].shape[1] < whole["input_ids"].shape[1]
    for chunk in (0, 4):
        want, want_n = jitted(tasks.packed_response_logprobs, model, chunk_size=chunk)(whole)
        got, got_n = jitted(tasks.packed_response_logprobs, model, chunk_size=chunk)(shared)
        np.testing.assert_array_equal(np.asarray(got_n), np.asarray(want_n))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-4)

    lora = models.apply_lora(model, models.LoRAConfig(rank=4, alpha=8.0, dropout=0.0,
                                                      targets=("q_proj", "v_proj")),
                             rngs=nnx.Rngs(0))
    # Non-zero adapters, so the prefix's keys and values depend on the trained parameters.
    graphdef, params, rest = nnx.split(lora, models.trainable_filter(lora), ...)
    params = jax.tree.map(lambda x: x + 0.05, params)
    task = functools.partial(tasks.preference_task, pair_loss=losses.pair_loss_fn("dpo", beta=0.5),
                             beta=0.5)
    extra = {"ref_logps": np.random.default_rng(2).normal(-30, 3, 8).astype(np.float32),
             "valid": np.array([1, 1, 1, 1], np.float32)}

    def loss(params, batch):
        num, den, _ = task(nnx.merge(graphdef, params, rest), batch)
        return num / den

    grad = jax.jit(jax.value_and_grad(loss))
    want, want_g = grad(params, {**whole, **extra})
    got, got_g = grad(params, {**shared, **extra})
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(want_g)) > 0
    for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-3, atol=1e-6)


def test_shared_prefix_layout():
    prefix = np.arange(1, 9, dtype=np.int32)
    p = TokenizedPair(np.concatenate([prefix, [5, 6]]).astype(np.int32), np.array([8, 9], np.int32),
                      np.array([10], np.int32))
    other = TokenizedPair(np.array([1, 2, 3, 4, 5, 6, 7, 7, 5], np.int32), p.chosen, p.rejected)
    bare = TokenizedPair(prefix, p.chosen, p.rejected)  # nothing of its own after the prefix
    b = collate_packed_pairs([p, other, bare], [0, 1, 2], batch_size=4, buckets=(8, 16),
                             response_len=4, pad_id=0, prefix=prefix)
    np.testing.assert_array_equal(b["input_ids"][0], [5, 6, 8, 9, 10] + [0] * 11)
    np.testing.assert_array_equal(b["positions"][0][:5], [8, 9, 10, 11, 10])
    np.testing.assert_array_equal(b["response_source"][[0, 4]], [[1, 2, 0, 0], [1, 0, 0, 0]])
    # Rows that do not continue the prefix keep their whole prompt, positions from 0.
    np.testing.assert_array_equal(b["input_ids"][1][:12], [1, 2, 3, 4, 5, 6, 7, 7, 5, 8, 9, 10])
    np.testing.assert_array_equal(b["positions"][1][:12], list(range(11)) + [9])
    np.testing.assert_array_equal(b["input_ids"][2][:8], prefix)
    np.testing.assert_array_equal(b["prefix_rows"], [1, 0, 0, 0])
    np.testing.assert_array_equal(b["prefix_ids"], [prefix] * 4)


def test_shared_prefix_length():
    def pair(*prompt):
        return TokenizedPair(np.array(prompt, np.int32), np.array([1], np.int32),
                             np.array([2], np.int32))

    same = list(range(1, 11))
    # Every prompt keeps one token of its own, so a prompt equal to the prefix caps it.
    assert shared_prefix([pair(*same), pair(*same, 11)]).tolist() == same[:9]
    assert shared_prefix([pair(*same, 4), pair(*same, 5), pair(*same[:9], 7, 8)]).tolist() \
        == same[:9]
    # Half the prompts or more: a truncated prompt (here the first) does not turn it off.
    assert shared_prefix([pair(3, *same[3:], 4), pair(*same, 5), pair(*same, 6)]).tolist() == same
    assert shared_prefix([pair(*same, 4), pair(9, *same), pair(8, *same)]).size == 0
    assert shared_prefix([pair(*same, 4), pair(*same, 5)], min_length=11).size == 0
    assert shared_prefix([]).size == 0
