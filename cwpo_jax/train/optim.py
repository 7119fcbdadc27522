"""optax AdamW with linear warm-up + cosine decay and global-norm clipping."""
from __future__ import annotations

import jax
import optax
from flax import nnx

from cwpo_jax.sharding import LAYER_AXIS, variable_axes


def learning_rate_schedule(*, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                           schedule: str = "cosine") -> optax.Schedule:
    """Warm-up from 0 to `learning_rate` over `warmup_steps`, then cosine to 0 or constant."""
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps=warmup_steps, decay_steps=max(total_steps, 1),
            end_value=0.0)
    if schedule == "constant":
        if warmup_steps == 0:
            return optax.constant_schedule(learning_rate)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup_steps),
             optax.constant_schedule(learning_rate)], [warmup_steps])
    raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine' or 'constant'")


def decay_mask(params):
    """Weight decay on matrices only (not on biases, norm scales or other vectors). A leading
    stacked-layer axis (logical name "layers", models.stacking) is not a matrix dimension."""
    def is_matrix(leaf):
        ndim = len(leaf.shape)
        if isinstance(leaf, nnx.Variable):
            ndim -= int(variable_axes(leaf)[:1] == (LAYER_AXIS,))
        return ndim >= 2

    return jax.tree.map(is_matrix, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(*, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                   weight_decay: float = 0.0, grad_clip: float = 1.0, b1: float = 0.9,
                   b2: float = 0.999, schedule: str = "cosine"):
    """Returns (optax transformation, schedule). grad_clip <= 0 disables clipping."""
    lr = learning_rate_schedule(learning_rate=learning_rate, total_steps=total_steps,
                                warmup_steps=warmup_steps, schedule=schedule)
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask))
    return optax.chain(*parts), lr
