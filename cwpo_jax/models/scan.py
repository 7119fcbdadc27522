"""L identical layers held as one layer whose Variables carry a leading layer axis, run under
`jax.lax.scan` so XLA compiles one layer instead of L unrolled copies (compile time and program
size stop growing with depth). `models.stacking` converts models to and from this form.
Stacked Variables get the logical axis "layers" in front of their own: never sharded
(sharding.RULES), and not counted as a matrix dimension by the optimizer's weight-decay mask
(train.optim.decay_mask).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cwpo_jax import sharding
from cwpo_jax.models import layers
from cwpo_jax.sharding import AXES_KEY, LAYER_AXIS, variable_axes


class StackedLayers(nnx.Module):
    """L layers of one structure as a single template layer whose Variables are [L, ...]."""

    def __init__(self, layers):
        layers = list(layers)
        if not layers:
            raise ValueError("stack_layers: the model has no layers to stack")
        graphdef, first = nnx.split(layers[0])
        states = [first]
        for i, layer in enumerate(layers[1:], start=1):
            g, s = nnx.split(layer)
            if g != graphdef:
                raise ValueError(
                    f"stack_layers: layer {i} differs in structure from layer 0 (e.g. a "
                    "per-layer sliding window or adapter); only identical layers can be scanned")
            states.append(s)
        self.num_layers = len(layers)
        stacked = jax.tree.map(_stack_variable, *states,
                               is_leaf=lambda x: isinstance(x, nnx.Variable))
        self.layer = nnx.merge(graphdef, stacked)

    def __call__(self, x, *, remat: bool | str = False, **kwargs):
        """x -> x after every layer in order; `kwargs` go to each layer's call (no cache)."""
        graphdef, params, rest = nnx.split(self.layer, nnx.Param, ...)

        def body(x, layer_state):
            layer = nnx.merge(graphdef, *layer_state)
            y = layer(sharding.constrain_batch(x), cache=None, cache_index=None, **kwargs)[0]
            # Only non-parameter state (dropout RNG counters) can change; carry it out.
            return y, nnx.state(layer, nnx.Not(nnx.Param))

        # Without remat ("none", "dots") only the matmul outputs are saved, the elementwise ops
        # recomputed in the backward pass: saving every residual, XLA copies each stacked
        # residual after the forward loop (BENCHMARKS.md, "Scan over layers"). "full" saves
        # nothing but each layer's input: the whole body reruns.
        full = layers.remat_policy(remat) == "full"
        policy = None if full else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
        body = jax.checkpoint(body, prevent_cse=False, policy=policy)
        x, new_rest = jax.lax.scan(body, x, (params, rest))
        nnx.update(self.layer, new_rest)
        return x

    def unstacked(self) -> list:
        """The L layers as their own modules (slices of the stacked Variables)."""
        graphdef, state = nnx.split(self.layer)
        return [nnx.merge(graphdef, _map_variables(state, lambda a: a[i], lambda ax: ax[1:]))
                for i in range(self.num_layers)]


def _stack_variable(*variables):
    value = jnp.stack([v.get_value() for v in variables])
    return _rewrap(variables[0], value, lambda axes: (LAYER_AXIS, *axes))


def _map_variables(state, value_fn, axes_fn):
    return jax.tree.map(lambda v: _rewrap(v, value_fn(v.get_value()), axes_fn), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def _rewrap(variable, value, axes_fn):
    """`variable` holding `value`, its logical axes (when it has any) passed through axes_fn."""
    if variable.has_metadata(AXES_KEY):
        return variable.replace(value, **{AXES_KEY: axes_fn(variable_axes(variable))})
    return variable.replace(value)
