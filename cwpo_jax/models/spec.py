"""What a model family declares about itself, in one `Family` next to its model code.

`models.families` collects the declarations; the HF and GGUF loaders, the HF exporter, layer
stacking and the tiny test/demo models read them there, so adding a family is its own module
plus one line in families.py.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Container, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class GGUFLayout:
    """How llama.cpp names a family's tensors. `layer_tensors` maps an HF name after
    "model.layers.{i}." to the GGUF name after "blk.{i}."; `rope_permuted` lists the
    architectures whose Q/K rows llama.cpp permuted for its interleaved RoPE."""

    architectures: tuple[str, ...]
    global_tensors: Mapping[str, str]
    layer_tensors: Mapping[str, str]
    rope_permuted: tuple[str, ...] = ()

    def tensor_name(self, hf: str) -> str | None:
        """HF tensor name -> GGUF tensor name (None when GGUF has no such tensor)."""
        if hf in self.global_tensors:
            return self.global_tensors[hf]
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf)
        if m and m.group(2) in self.layer_tensors:
            return f"blk.{m.group(1)}.{self.layer_tensors[m.group(2)]}"
        return None


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    hf_classes: HF config model_type -> transformers class stem ("Llama" for LlamaForCausalLM,
      LlamaForSequenceClassification); its keys are the model_types the family loads.
    hf_path: our dotted module path (no leaf) -> the HF module path in the base checkpoint.
    reward_head / reward_prefix: the *ForSequenceClassification head's module name, and the
      prefix its backbone's tensors carry there.
    pooled_reward_head: that head reads the encoder's pooled output (config.pooling) through a
      Linear with bias, as BertForSequenceClassification does.
    reward_overrides: config overrides when the model is loaded as a reward backbone.
    weight_overrides: config facts only the checkpoint's tensor names tell.
    tiny_config: a small random-init HF config (vocab_size filled in by the caller) for tests
      and the tiny demo pipeline; None when the family has none.
    gguf: its llama.cpp layout, None when GGUF files of it are not read.
    stackable: its decoder's layers are identical and can run under one scan (models.stacking).
    """

    name: str
    config_cls: type
    model_cls: type
    hf_classes: Mapping[str, str]
    hf_path: Callable[[str], str]
    reward_head: str = "score"
    reward_prefix: str = ""
    pooled_reward_head: bool = False
    reward_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weight_overrides: Callable[[Container[str]], dict] | None = None
    tiny_config: Mapping[str, Any] | None = None
    gguf: GGUFLayout | None = None
    stackable: bool = False

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.hf_classes)
