"""Tokenisation: templates, response masks, truncation sides, BOS and EOS handling."""

import numpy as np
import pytest

from cwpo_jax.data import load_preferences
from cwpo_jax.data.tokenize import PairTokenizer, plain_prompt
from tests.data.conftest import fixture


@pytest.fixture(scope="module")
def pairs():
    hh, _ = load_preferences(fixture("hh_rlhf.jsonl"), format="hh_rlhf")
    uf, _ = load_preferences(fixture("ultrafeedback.jsonl"), format="ultrafeedback")
    return hh + uf


def test_chat_template_prompt_and_response_text(chat_tokenizer, pairs):
    enc = PairTokenizer(chat_tokenizer, max_prompt_len=512, max_len=1024)
    items = enc.encode_pairs(pairs)
    multi = pairs[1]  # five-turn HH dialogue
    tp = items[1]
    prompt_text = chat_tokenizer.decode(tp.prompt)
    assert prompt_text == chat_tokenizer.apply_chat_template(
        [dict(m) for m in multi.prompt], tokenize=False, add_generation_prompt=True
    )
    assert prompt_text.endswith(
        "<|im_start|>user\nHow long should it rise?<|im_end|>\n<|im_start|>assistant\n"
    )
    # The response is what the template appends, plus EOS because the template's end-of-turn
    # mark is not the tokenizer's EOS here.
    assert chat_tokenizer.decode(tp.chosen) == multi.chosen + "<|im_end|>\n</s>"
    assert chat_tokenizer.decode(tp.rejected) == multi.rejected + "<|im_end|>\n</s>"
    assert tp.chosen[-1] == chat_tokenizer.eos_token_id
    assert enc.stats.prompts == len(pairs) and enc.stats.prompts_truncated == 0


def test_plain_template_adds_bos_and_eos(plain_tokenizer, pairs):
    enc = PairTokenizer(plain_tokenizer, max_prompt_len=512, max_len=1024)
    tp = enc.encode_pairs(pairs[:1])[0]
    assert tp.prompt[0] == plain_tokenizer.bos_token_id
    assert plain_tokenizer.decode(tp.prompt, skip_special_tokens=True) == (
        "Human: What is the capital of France?\n\nAssistant:"
    )
    assert plain_tokenizer.decode(tp.chosen) == " The capital of France is Paris.</s>"
    assert (
        plain_prompt(
            [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"},
                {"role": "user", "content": "V"},
            ]
        )
        == "S\n\nHuman: U\n\nAssistant: A\n\nHuman: V\n\nAssistant:"
    )


def test_truncation_prompt_left_response_right(plain_tokenizer, pairs):
    full = PairTokenizer(plain_tokenizer, max_prompt_len=512, max_len=1024).encode_pairs(pairs)
    enc = PairTokenizer(plain_tokenizer, max_prompt_len=12, max_len=20)
    cut = enc.encode_pairs(pairs)
    for f, c in zip(full, cut):
        assert len(c.prompt) <= 12 and len(c.prompt) + max(len(c.chosen), len(c.rejected)) <= 20
        if len(f.prompt) > 12:
            # leading BOS kept, then the last 11 prompt tokens
            assert c.prompt[0] == plain_tokenizer.bos_token_id
            np.testing.assert_array_equal(c.prompt[1:], f.prompt[-11:])
        else:
            np.testing.assert_array_equal(c.prompt, f.prompt)
        budget = 20 - len(c.prompt)
        for fr, cr in ((f.chosen, c.chosen), (f.rejected, c.rejected)):
            np.testing.assert_array_equal(cr, fr[:budget])  # right-truncated: EOS gone when cut
    assert enc.stats.prompts_truncated > 0 and enc.stats.responses_truncated > 0
    capped = PairTokenizer(plain_tokenizer, max_prompt_len=12, max_len=40, max_response_len=3)
    assert all(len(t.chosen) <= 3 for t in capped.encode_pairs(pairs))


def test_prompt_truncation_without_bos(chat_tokenizer, pairs):
    full = PairTokenizer(chat_tokenizer, max_prompt_len=512, max_len=1024).encode_pairs(pairs[1:2])
    cut = PairTokenizer(chat_tokenizer, max_prompt_len=10, max_len=30).encode_pairs(pairs[1:2])
    np.testing.assert_array_equal(cut[0].prompt, full[0].prompt[-10:])


def test_sequences_and_prompt_only(chat_tokenizer, pairs):
    enc = PairTokenizer(chat_tokenizer, max_prompt_len=256, max_len=512)
    seqs = enc.encode_sequences([p.prompt for p in pairs], [p.chosen for p in pairs])
    items = enc.encode_pairs(pairs)
    for s, t in zip(seqs, items):
        np.testing.assert_array_equal(s.prompt, t.prompt)
        np.testing.assert_array_equal(s.response, t.chosen)
    prompts = enc.encode_prompt_only([p.prompt for p in pairs])
    assert all(len(p.response) == 0 for p in prompts)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        enc.encode_sequences([pairs[0].prompt] * 2, ["x"])


def test_template_that_rewrites_history_falls_back(chat_tokenizer, pairs):
    import copy

    tok = copy.deepcopy(chat_tokenizer)
    # The generation prompt differs from how the answered conversation renders (like templates
    # that open a reasoning block only at generation time): the prompt is no prefix.
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant><think>{% endif %}"
    )
    enc = PairTokenizer(tok, max_prompt_len=256, max_len=512)
    tp = enc.encode_pairs(pairs[:1])[0]
    assert enc.stats.template_fallbacks == 2
    assert tok.decode(tp.chosen) == pairs[0].chosen + "</s>"


def test_bad_lengths(chat_tokenizer):
    with pytest.raises(ValueError, match="max_prompt_len"):
        PairTokenizer(chat_tokenizer, max_prompt_len=64, max_len=64)
