"""Jitted step functions, kept apart from the loop: train (with gradient accumulation).

A task is `task(model, batch) -> (numerator, denominator, metrics)` (see tasks.py). Batches fed to
the train step carry a leading micro-batch axis [A, ...]; the step scans over it, sums numerators,
denominators and gradients, and applies one optimizer update, so A micro-batches of size b give
exactly the update of one batch of size A * b.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from cwpo_jax import sharding
from cwpo_jax.train.state import TrainState, merge_model


def _loss_and_aux(graphdef, task, compute_dtype):
    def fn(params, frozen, mutable, batch):
        model = merge_model(graphdef, params, frozen, mutable, compute_dtype)
        numerator, denominator, metrics = task(model, batch)
        new_mutable = nnx.state(model, nnx.Not(nnx.Param))
        return numerator, (denominator, metrics, new_mutable)

    return fn


def make_train_step(graphdef, task: Callable, optimizer: optax.GradientTransformation, *,
                    schedule: optax.Schedule | None = None, compute_dtype=None):
    """step(state, frozen, batch) -> (state, metrics). Not jitted; see `jit_train_step`.

    A step whose loss or gradient norm is not finite leaves the state unchanged and reports
    metrics["finite"] = 0, so the loop can stop with the last good state intact.
    """
    loss_fn = _loss_and_aux(graphdef, task, compute_dtype)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulate(state, frozen, batch):
        """Summed gradients, numerator, denominator and metrics over the micro-batch axis."""
        if jax.tree.leaves(batch)[0].shape[0] == 1:
            # One micro-batch: no scan, so no zero-initialised accumulator next to the gradient.
            (num, (den, metrics, mutable)), grads = grad_fn(
                state.params, frozen, state.mutable, jax.tree.map(lambda x: x[0], batch))
            return grads, num, den, mutable, jax.tree.map(lambda x: x[None], metrics)

        def micro_step(carry, micro_batch):
            grads, numerator, denominator, mutable = carry
            (num, (den, metrics, mutable)), g = grad_fn(state.params, frozen, mutable, micro_batch)
            grads = jax.tree.map(jnp.add, grads, g)
            return (grads, numerator + num, denominator + den, mutable), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, jnp.float32(0), jnp.float32(0), state.mutable)
        (grads, numerator, denominator, mutable), metrics = jax.lax.scan(micro_step, init, batch)
        return grads, numerator, denominator, mutable, metrics

    def step(state: TrainState, frozen, batch):
        grads, numerator, denominator, mutable, metrics = accumulate(state, frozen, batch)
        denominator = jnp.where(denominator > 0, denominator, 1.0)
        loss = numerator / denominator
        grad_norm = optax.tree.norm(grads) / denominator
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(state):
            # A multiply, not a divide: XLA fuses it into each consumer (the clip's norm, AdamW)
            # rather than keep a divided copy of every gradient next to `grads` (a divide is too
            # costly to duplicate). Saves memory together with CPU_COMPILER_OPTIONS on CPU.
            g = jax.tree.map(lambda g: g * (1.0 / denominator), grads)
            updates, opt_state = optimizer.update(g, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return TrainState(state.step + 1, params, opt_state, mutable)

        # A branch rather than a select over old and new state: the update can then be written
        # into the donated buffers instead of materialising a second state.
        new_state = jax.lax.cond(finite, update, lambda s: s, state)
        out = {k: jnp.mean(v) for k, v in metrics.items()}
        out.update(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
        if schedule is not None:
            out["learning_rate"] = schedule(state.step)
        return new_state, out

    return step


# XLA:CPU's default scheduler is breadth first: in the update it would compute every leaf's
# clipped gradient before the first AdamW update, a second gradient-sized tree next to the
# gradients. The memory-optimised one goes leaf by leaf, at the same step time (BENCHMARKS.md,
# "Optimisations: prediction and outcome").
CPU_COMPILER_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def jit_train_step(step, mesh: Mesh, state_shardings, frozen_shardings):
    """jax.jit with explicit shardings; the state is donated (updated in place). On CPU meshes
    the step is compiled with CPU_COMPILER_OPTIONS."""
    cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
    return jax.jit(
        sharding.mesh_context(step, mesh),
        # [A, B] spec: a batch leaf's dims after B (any number) are unsharded too.
        in_shardings=(state_shardings, frozen_shardings, sharding.batch_sharding(mesh, 2, 1)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
        compiler_options=dict(CPU_COMPILER_OPTIONS) if cpu else None,
    )
