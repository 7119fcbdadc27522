"""Scan over layers: convert a model's decoders to and from `StackedLayers` (models.scan).

`stack_layers(model)` replaces each stackable decoder's `layers` (an `nnx.List` of layers with
one structure) by a `StackedLayers`, whose forward pass runs the layer body once under
`jax.lax.scan`. `unstack_layers` restores the per-layer list, so HF export, LoRA merging and
checkpoints in HF layout see the usual paths. Which families are stackable: models.families.
"""
from __future__ import annotations

from flax import nnx

from cwpo_jax.models import families
from cwpo_jax.models.scan import StackedLayers

__all__ = ["StackedLayers", "is_stacked", "stack_layers", "unstack_layers"]


def _decoders(model: nnx.Module):
    """Every module in `model` (itself included) that can run its layers stacked."""
    stackable = families.stackable_models()
    return [node for _, node in nnx.iter_graph(model) if isinstance(node, stackable)]


def is_stacked(model: nnx.Module) -> bool:
    return any(isinstance(d.layers, StackedLayers) for d in _decoders(model))


def stack_layers(model: nnx.Module) -> nnx.Module:
    """In place: every stackable (Llama-family) decoder in `model` runs its layers under one
    scan."""
    decoders = _decoders(model)
    if not decoders:
        raise ValueError(f"stack_layers: {type(model).__name__} has no Llama-family decoder; "
                         "scanning over layers is built for LlamaForCausalLM (and models "
                         "wrapping one)")
    for decoder in decoders:
        if not isinstance(decoder.layers, StackedLayers):
            decoder.layers = StackedLayers(decoder.layers)
    return model


def unstack_layers(model: nnx.Module) -> nnx.Module:
    """In place: the inverse of `stack_layers` (per-layer modules, HF parameter paths)."""
    for decoder in _decoders(model):
        if isinstance(decoder.layers, StackedLayers):
            decoder.layers = nnx.List(decoder.layers.unstacked())
    return model
