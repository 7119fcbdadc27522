"""FLOP accounting for MFU: model FLOPs per trained token and the mesh's peak FLOP/s."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cwpo_jax.models.lora import layer_index
from cwpo_jax.train.metrics import measure_matmul_peak


@functools.lru_cache(maxsize=None)
def device_peak_flops(dtype: str) -> float:
    """One device's matmul FLOP/s in the compute dtype, measured once per process."""
    return measure_matmul_peak(dtype=jnp.dtype(dtype))


def mesh_peak_flops(mesh, compute_dtype: str) -> float:
    """The MFU denominator of a step sharded over `mesh`: every device's peak in that dtype."""
    return device_peak_flops(compute_dtype) * mesh.devices.size


def count_params(tree) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def matmul_params(model, *, lm_head: bool, from_layer: int = 0) -> int:
    """Parameters that cost 2 FLOPs per token in a forward pass: all but lookup tables
    (token, position and type embeddings), plus the LM head's D x V when logits are computed
    (a tied head reuses the embedding table as a matmul). from_layer > 0 leaves out the
    layers below it."""
    total = 0
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        layer = layer_index(path)
        if layer is not None and layer < from_layer:
            continue
        if path[-1] != "embedding":  # the table of an Embed module: a lookup, no FLOPs
            total += int(np.prod(np.shape(var.get_value())))
    if lm_head:
        # Shapes only, so an abstract model (nnx.eval_shape, launch/plan.py) counts too.
        head = int(np.prod(nnx.eval_shape(lambda m: m.lm_head_matrix(), model).shape))
        untied = getattr(model, "lm_head", None)
        if untied is None:  # a tied head reuses the embedding table as a matmul
            total += head
    return total


def train_flops_per_token(model, *, lm_head: bool, frozen_weights: bool,
                          first_layer: int = 0) -> float:
    """Forward + backward FLOPs per token: 6 N (2 forward, 2 activation grads, 2 weight grads);
    with frozen weights (LoRA: adapter FLOPs are negligible) 2 N forward + 2 N' activation
    grads, N' the parameters from the lowest layer with adapters up (below it the backward
    pass has nothing to reach). first_layer > 0: the step starts there (the layers below ran
    once beforehand), so N counts from it too."""
    n = matmul_params(model, lm_head=lm_head, from_layer=first_layer)
    if not frozen_weights:
        return 6.0 * n
    adapted = [layer_index(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))]
    lowest = min((i for i in adapted if i is not None), default=0)
    return 2.0 * n + 2.0 * matmul_params(model, lm_head=lm_head,
                                         from_layer=max(lowest, first_layer))
