"""Train state as a plain pytree, and the split of an NNX model into trained / frozen / mutable."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from cwpo_jax import sharding


class TrainState(NamedTuple):
    """Everything a step changes. `frozen` params (LoRA base weights) travel separately."""

    step: jax.Array  # int32 scalar
    params: Any  # nnx.State of trainable parameters (fp32 master copy)
    opt_state: Any  # optax state
    mutable: Any  # nnx.State of non-parameter model state (RNG streams for dropout)


class ModelParts(NamedTuple):
    graphdef: Any
    params: Any
    frozen: Any
    mutable: Any


def split_model(model: nnx.Module, trainable=nnx.Param) -> ModelParts:
    """Split into (graphdef, trainable params, frozen params, other state).

    trainable: an NNX filter; nnx.Param trains everything, nnx.LoRAParam only the adapters.
    """
    graphdef, params, frozen, mutable = nnx.split(model, trainable, nnx.Param, ...)
    return ModelParts(graphdef, params, frozen, mutable)


def merge_model(graphdef, params, frozen, mutable, compute_dtype=None) -> nnx.Module:
    """Rebuild the module; with compute_dtype (e.g. bf16) float params are cast for the forward,
    and gradients still reach the fp32 master params through the cast."""
    if compute_dtype is not None:
        params, frozen = (cast_floats(s, compute_dtype) for s in (params, frozen))
    # Rebuild the Variables inside the current trace: NNX refuses to mutate (e.g. advance a
    # dropout RNG) a Variable created at an outer trace level, such as a jit argument under grad.
    mutable = jax.tree.map(lambda x: x, mutable)
    return nnx.merge(graphdef, params, frozen, mutable)


def cast_floats(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def variable_shardings(state, mesh: Mesh, rules=sharding.RULES):
    """The same nnx.State with each Variable's value replaced by its NamedSharding, from the
    Variable's logical axis names (sharding.variable_axes); unnamed variables are replicated."""

    def one(var):
        names = sharding.variable_axes(var)
        shape = jnp.shape(var.get_value())
        if not names or len(names) != len(shape):
            return var.replace(NamedSharding(mesh, sharding.P()))
        spec = sharding.logical_to_spec(names, shape, mesh, rules)
        return var.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _on_mesh(x, mesh: Mesh) -> bool:
    return isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh


def place(tree, shardings):
    """Copies onto the target shardings: the train step donates its state, and a buffer shared
    with the caller's model would be deleted under it."""
    # (device_put(..., may_alias=False) still aliases the source's shard when it replicates.)
    return jax.tree.map(lambda x, s: jax.device_put(jnp.array(x, copy=True), s), tree, shardings)


def init_train_state(parts: ModelParts, optimizer, mesh: Mesh):
    """Shard params by their logical axes, then initialise the optimizer under jit so its moments
    inherit the params' shardings. Returns (state, frozen, state_shardings, frozen_shardings)."""
    param_sh = variable_shardings(parts.params, mesh)
    frozen_sh = variable_shardings(parts.frozen, mesh)
    params = place(parts.params, param_sh)
    frozen = place(parts.frozen, frozen_sh)
    mutable = jax.device_put(parts.mutable, sharding.replicated(mesh))
    opt_state = jax.jit(optimizer.init)(params)
    state = TrainState(jnp.zeros((), jnp.int32), params, opt_state, mutable)
    # Scalars (step, optimizer counts) come back on one device: replicate them over the mesh.
    state = jax.tree.map(lambda x: x if _on_mesh(x, mesh) else
                         jax.device_put(x, sharding.replicated(mesh)), state)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    return state, frozen, state_sh, frozen_sh
