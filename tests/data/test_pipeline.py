"""Files -> pairs -> splits -> tokens -> grain batches, checked against the text itself."""

import numpy as np
import pytest

from cwpo_jax.data import load_preferences
from cwpo_jax.data.batching import default_buckets, padding_share
from cwpo_jax.data.loader import pair_dataset, prompt_dataset
from cwpo_jax.data.splits import split_pairs
from cwpo_jax.data.tokenize import PairTokenizer
from tests.data.conftest import fixture

SOURCES = [
    ("hh_rlhf.jsonl", "hh_rlhf"),
    ("tldr_comparisons.json", "tldr"),
    ("ultrafeedback.jsonl", "ultrafeedback"),
]


@pytest.fixture(scope="module")
def pool():
    pairs = []
    for name, fmt in SOURCES:
        pairs += load_preferences(fixture(name), format=fmt)[0]
    return pairs


@pytest.mark.parametrize("tok_name", ["chat_tokenizer", "plain_tokenizer"])
def test_response_mask_selects_exactly_the_response(request, pool, tok_name):
    tok = request.getfixturevalue(tok_name)
    s = split_pairs(pool, seed=0, labelled=0.5)
    enc = PairTokenizer(tok, max_prompt_len=192, max_len=256)
    items = enc.encode_pairs(s.unlabelled)
    # CW-PO hook: weak labels flip some pairs, confidence weights them.
    swap = np.arange(len(items)) % 3 == 0
    weights = np.linspace(0.2, 0.9, len(items)).astype(np.float32)
    ds = pair_dataset(
        items,
        batch_size=2,
        buckets=default_buckets(256),
        pad_id=tok.pad_token_id,
        seed=1,
        swap=swap,
        weights=weights,
    )
    seen = []
    for b in ds:
        bsz = len(b["pair_index"])
        for row, i in enumerate(b["pair_index"]):
            if i < 0:
                continue
            seen.append(i)
            pair = s.unlabelled[i]
            want_first, want_second = (
                (pair.rejected, pair.chosen) if swap[i] else (pair.chosen, pair.rejected)
            )
            tp = items[i]
            ids_first, ids_second = (
                (tp.rejected, tp.chosen) if swap[i] else (tp.chosen, tp.rejected)
            )
            for r, want, want_ids in (
                (row, want_first, ids_first),
                (bsz + row, want_second, ids_second),
            ):
                resp = b["input_ids"][r][b["response_mask"][r] == 1]
                np.testing.assert_array_equal(resp, want_ids)
                assert tok.decode(resp).lstrip(" ").startswith(want)
                # the model predicts response tokens from position t-1: the first response token
                # follows the last prompt token
                first = int(np.argmax(b["response_mask"][r]))
                np.testing.assert_array_equal(b["input_ids"][r, :first], items[i].prompt)
                assert (b["attention_mask"][r] >= b["response_mask"][r]).all()
            assert b["weights"][row] == weights[i]
    assert sorted(seen) == list(range(len(items)))


def test_prompt_batches_decode_to_rendered_prompts(chat_tokenizer, pool):
    enc = PairTokenizer(chat_tokenizer, max_prompt_len=192, max_len=256)
    prompts = enc.encode_prompt_only([p.prompt for p in pool])
    for b in prompt_dataset(prompts, batch_size=4, buckets=(64, 128, 192), pad_id=0):
        for row, i in enumerate(b["index"]):
            if i >= 0:
                text = chat_tokenizer.decode(b["input_ids"][row][b["attention_mask"][row] == 1])
                assert text == enc.render_prompt(pool[i].prompt)[-len(text) :]


def test_padding_share_is_reported(chat_tokenizer, pool):
    enc = PairTokenizer(chat_tokenizer, max_prompt_len=192, max_len=256)
    items = enc.encode_pairs(pool)
    batches = list(
        pair_dataset(items, batch_size=4, buckets=default_buckets(256), pad_id=0, seed=0)
    )
    share = padding_share(batches)
    assert 0.0 < share < 0.6, share
