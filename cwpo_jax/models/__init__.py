"""Flax NNX model families, reward heads, LoRA, checkpoint I/O, tokenizers and sampling.

Public entry points (see docs/models.md):
  from_pretrained(path, dtype=...)              -> causal LM (or BertModel for encoder dirs)
  reward_model_from_pretrained(path, ...)       -> RewardModel, scores [B]
  load_tokenizer(path)                          -> tokenizer (HF dir / hub id / .gguf)
  save_pretrained(model, path)                  -> HF config.json + model.safetensors
  logical_axes(model)                           -> logical axis names per nnx.Param
  generate(model, ids, mask, key=..., ...)      -> jitted KV-cache sampling
  stack_layers(model) / unstack_layers(model)   -> scan over layers (Llama family) and back
  families                                      -> the supported families (models.spec.Family)
"""
from __future__ import annotations

import os
from typing import Any

from flax import nnx
from jax.typing import DTypeLike

from cwpo_jax.assets import is_local_path
from cwpo_jax.models import families
from cwpo_jax.models.bert import BertConfig, BertModel
from cwpo_jax.models.checkpoint_hf import load_hf_model, load_hf_reward_model, save_hf
from cwpo_jax.models.gguf_io import load_gguf_model
from cwpo_jax.models.layers import LOGICAL_AXES, logical_axes
from cwpo_jax.models.llama import LlamaConfig, LlamaForCausalLM
from cwpo_jax.models.lora import (
    LORA_FILTER,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    has_lora,
    merge_lora,
    trainable_filter,
)
from cwpo_jax.models.opt import OPTConfig, OPTForCausalLM
from cwpo_jax.models.reward import RewardModel
from cwpo_jax.models.sampling import Generation, generate, sample_logits
from cwpo_jax.models.stacking import StackedLayers, is_stacked, stack_layers, unstack_layers
from cwpo_jax.models.tokenizer import load_tokenizer

__all__ = [
    "LOGICAL_AXES",
    "LORA_FILTER",
    "BertConfig",
    "BertModel",
    "Generation",
    "LlamaConfig",
    "LlamaForCausalLM",
    "LoRAConfig",
    "LoRALinear",
    "OPTConfig",
    "OPTForCausalLM",
    "RewardModel",
    "StackedLayers",
    "apply_lora",
    "families",
    "from_pretrained",
    "generate",
    "has_lora",
    "is_stacked",
    "load_tokenizer",
    "logical_axes",
    "merge_lora",
    "resolve_path",
    "reward_model_from_pretrained",
    "sample_logits",
    "save_pretrained",
    "stack_layers",
    "trainable_filter",
    "unstack_layers",
]

_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def resolve_path(path: str | os.PathLike) -> str:
    """Local dir / .gguf file as is; otherwise treat `path` as a hub id and download it
    (needs network; fails with the hub's error where there is none)."""
    path = os.fspath(path)
    if os.path.exists(path):
        return path
    if path.endswith(".gguf"):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if is_local_path(path):
        # A hub id is "owner/name": this one names a local folder that is not there.
        raise FileNotFoundError(f"model directory not found: {path}")
    from huggingface_hub import snapshot_download

    local = snapshot_download(repo_id=path, allow_patterns=_HUB_PATTERNS)
    if not any(f.endswith(".safetensors") for f in os.listdir(local)):
        # Older repos (e.g. facebook/opt-125m) may only have torch pickles and Flax weights.
        local = snapshot_download(repo_id=path, allow_patterns=[*_HUB_PATTERNS, "*.msgpack"])
    return local


def from_pretrained(path: str | os.PathLike, *, dtype: DTypeLike = "float32",
                    param_dtype: DTypeLike | None = None, **overrides: Any) -> nnx.Module:
    """HF directory (config.json + safetensors, sharded index included), hub id, or .gguf ->
    model. Decoders: `model(ids, mask) -> logits [B,T,V]`. `dtype` is the compute dtype,
    `param_dtype` (default: dtype) the stored one. `overrides` replace config fields."""
    path = resolve_path(path)
    if path.endswith(".gguf"):
        return load_gguf_model(path, dtype=dtype, param_dtype=param_dtype, **overrides)
    return load_hf_model(path, dtype=dtype, param_dtype=param_dtype, **overrides)


def reward_model_from_pretrained(path: str | os.PathLike, *, dtype: DTypeLike = "float32",
                                 param_dtype: DTypeLike | None = None, seed: int = 0,
                                 **overrides: Any) -> RewardModel:
    """-> RewardModel, `rm(ids, mask) -> scores [B]`. Loads a one-label *ForSequenceClassification
    head when present; otherwise a fresh small head (seeded) on the pretrained backbone."""
    path = resolve_path(path)
    if path.endswith(".gguf"):
        backbone = load_gguf_model(path, dtype=dtype, param_dtype=param_dtype, **overrides)
        return RewardModel(backbone, rngs=nnx.Rngs(seed))
    return load_hf_reward_model(path, dtype=dtype, param_dtype=param_dtype, seed=seed,
                                **overrides)


def save_pretrained(model: nnx.Module, path: str | os.PathLike, *, tokenizer: Any = None) -> None:
    """HF-format export (stacked layers split back and LoRA merged first, on a copy);
    `tokenizer.save_pretrained` too when given."""
    if is_stacked(model):
        model = unstack_layers(nnx.clone(model))
    if has_lora(model):
        model = merge_lora(model)
    save_hf(model, os.fspath(path))
    if tokenizer is not None:
        import jax

        if jax.process_index() == 0:  # one writer; save_hf's barrier has passed
            tokenizer.save_pretrained(os.fspath(path))
