"""Token cache: hits return identical arrays, any input change misses."""

import dataclasses
import os

import numpy as np

from cwpo_jax.data import load_preferences
from cwpo_jax.data.token_cache import encode_pairs_cached
from cwpo_jax.data.tokenize import PairTokenizer
from tests.data.conftest import fixture


def test_hit_miss_and_identical_arrays(tmp_path, chat_tokenizer):
    pairs, _ = load_preferences(fixture("ultrafeedback.jsonl"), format="ultrafeedback")
    enc = PairTokenizer(chat_tokenizer, max_prompt_len=64, max_len=128)
    first, path = encode_pairs_cached(enc, pairs, str(tmp_path))
    assert os.path.exists(path) and enc.stats.prompts == 3
    again = PairTokenizer(chat_tokenizer, max_prompt_len=64, max_len=128)
    second, path2 = encode_pairs_cached(again, pairs, str(tmp_path))
    assert path2 == path and again.stats.prompts == 0  # served from disk
    for a, b in zip(first, second):
        for f in ("prompt", "chosen", "rejected"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
            assert getattr(b, f).dtype == np.int32
    # text, order, limits: each gives a different key
    edited = [dataclasses.replace(pairs[0], rejected=pairs[0].rejected + "!")] + pairs[1:]
    assert encode_pairs_cached(enc, edited, str(tmp_path))[1] != path
    assert encode_pairs_cached(enc, pairs[::-1], str(tmp_path))[1] != path
    shorter = PairTokenizer(chat_tokenizer, max_prompt_len=32, max_len=128)
    assert encode_pairs_cached(shorter, pairs, str(tmp_path))[1] != path
    assert len(os.listdir(tmp_path)) == 4
