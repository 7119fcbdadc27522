"""The model families cwpo_jax loads, each declared once in its own module (models.spec.Family).

Adding a family: write its module with a `FAMILY`, then add that to `FAMILIES` below.
"""
from __future__ import annotations

from typing import Any

from cwpo_jax.models import bert, llama, opt
from cwpo_jax.models.spec import Family, GGUFLayout

FAMILIES: tuple[Family, ...] = (llama.FAMILY, opt.FAMILY, bert.FAMILY)

_BY_MODEL_TYPE = {mt: f for f in FAMILIES for mt in f.model_types}


def model_types() -> list[str]:
    """Every HF config model_type some family loads, sorted."""
    return sorted(_BY_MODEL_TYPE)


def get(model_type: str | None) -> Family | None:
    """The family that loads HF configs of `model_type`, None when none does."""
    return _BY_MODEL_TYPE.get(model_type)  # type: ignore[arg-type]


def for_model_type(model_type: str | None) -> Family:
    """The family that loads HF configs of `model_type`; ValueError naming the supported ones."""
    family = get(model_type)
    if family is None:
        raise ValueError(f"unknown model_type {model_type!r}; supported: {model_types()}")
    return family


def tiny_configs() -> dict[str, dict[str, Any]]:
    """{family name: small random-init HF config (no vocab_size)} for the families with one."""
    return {f.name: dict(f.tiny_config) for f in FAMILIES if f.tiny_config is not None}


def gguf_layouts() -> dict[str, GGUFLayout]:
    """{GGUF general.architecture: its tensor layout}."""
    return {arch: f.gguf for f in FAMILIES if f.gguf is not None for arch in f.gguf.architectures}


def stackable_models() -> tuple[type, ...]:
    """Model classes whose layers models.stacking can run under one scan."""
    return tuple(f.model_cls for f in FAMILIES if f.stackable)
