"""Tokenizers: tokenizer.json / AutoTokenizer for HF dirs and hub ids; GGUF metadata -> `tokenizers`.

transformers' own GGUF tokenizer path needs torch, so for .gguf files we build the byte-level
BPE tokenizer (vocab, merges, special tokens, chat template) ourselves and wrap it in a
PreTrainedTokenizerFast, which gives the usual `__call__`, `decode` and `apply_chat_template`.
"""
from __future__ import annotations

import functools
import os

from cwpo_jax.assets import is_local_path

# llama.cpp `tokenizer.ggml.pre` -> the split regex its merges were learned with. Names not listed
# use GPT-2's ByteLevel regex. "smollm" (SmolLM/SmolLM2) isolates each digit first.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's bytes -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _pre_tokenizer(pre: str | None):
    from tokenizers import Regex, pre_tokenizers

    if pre == "smollm":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    split = PRE_TOKENIZER_SPLITS.get(pre)
    if split is not None:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def gguf_tokenizer(path: str):
    """A PreTrainedTokenizerFast built from a GGUF file's `tokenizer.*` metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    from cwpo_jax.models.gguf_io import GGUFError, GGUFFile

    g = GGUFFile(path)
    kind = g.require("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(f"{path}: tokenizer.ggml.model={kind!r} is not supported (only 'gpt2' "
                        "byte-level BPE)")
    tokens = list(g.require("tokenizer.ggml.tokens"))
    types = list(g.field("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in g.require("tokenizer.ggml.merges")]
    alphabet = set(_byte_alphabet().values())
    spell = _byte_alphabet()
    # Tokens already in the byte alphabet stay; any other spelling is re-encoded byte by byte.
    vocab = {(t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))): i
             for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(g.field("tokenizer.ggml.pre"))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens (<|im_start|> ...) must stay whole, like llama.cpp does.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types)
                            if ty == TOKEN_TYPE_CONTROL and set(t) <= alphabet])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_USER_DEFINED])

    def special(key):
        i = g.field(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None else None

    bos = special("bos_token_id")
    if g.field("tokenizer.ggml.add_bos_token") and bos is not None:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, vocab[bos])])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=special("eos_token_id"),
        unk_token=special("unknown_token_id"), pad_token=special("padding_token_id"),
        chat_template=g.field("tokenizer.chat_template"), clean_up_tokenization_spaces=False)


def load_tokenizer(path: str, *, auto: bool = False):
    """`*.gguf` -> tokenizer from its metadata. A directory with tokenizer.json -> the generic
    PreTrainedTokenizerFast over that file (tokenizer.json fully defines the fast tokenizer, and
    this class does not pull in torch, which transformers' AutoTokenizer imports whenever torch is
    installed). Otherwise, or with auto=True, or for a hub id: AutoTokenizer."""
    path = os.fspath(path)
    if path.endswith(".gguf"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return gguf_tokenizer(path)
    if not os.path.exists(path) and is_local_path(path):
        # A hub id is "owner/name" (models.resolve_path's rule): this names a missing folder.
        raise FileNotFoundError(f"model directory not found: {path}")
    if not auto and os.path.exists(os.path.join(path, "tokenizer.json")):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
