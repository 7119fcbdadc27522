"""fit(): train a model on a task over length-bucketed items, resuming from its checkpoints."""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import jax.numpy as jnp
from flax import nnx

from cwpo_jax import models, sharding
from cwpo_jax.models.layers import set_remat
from cwpo_jax.train import loop, optim, steps
from cwpo_jax.train.checkpoint import Checkpointer
from cwpo_jax.train.feeder import train_batches
from cwpo_jax.train.flops import count_params, mesh_peak_flops
from cwpo_jax.train.hosts import log
from cwpo_jax.train.metrics import MetricsLogger
from cwpo_jax.train.state import cast_floats, init_train_state, split_model


def total_steps(train_cfg, num_items: int) -> int:
    steps_per_epoch = max(1, math.ceil(num_items / train_cfg.batch_size))
    n = max(1, math.ceil(train_cfg.epochs * steps_per_epoch)) if train_cfg.epochs > 0 else 0
    return min(n, train_cfg.max_steps) if train_cfg.max_steps > 0 else n


def fit(model, task: Callable, *, lengths: Sequence[int], collate: Callable, train_cfg, mesh,
        seed: int, workdir: str, name: str, trainable=nnx.Param, flops_per_token: float = 0.0):
    """Train `model` on `task` over the items behind (lengths, collate(index, shard=)) with the
    settings of a train section (stages/defaults.train_section), sharded over `mesh`, batches
    shuffled by `seed`; every process collates only its rows of each batch
    (sharding.process_block). Resumes from workdir/ckpt. Returns the trained model (LoRA
    still separate, layers unstacked)."""
    if train_cfg.remat != "none":
        model = set_remat(model, train_cfg.remat)
    if train_cfg.scan_layers:
        model = models.stack_layers(model)
    num_steps = total_steps(train_cfg, len(lengths))
    micro = train_cfg.micro_batches
    optimizer, schedule = optim.make_optimizer(
        learning_rate=train_cfg.learning_rate, total_steps=num_steps,
        warmup_steps=train_cfg.warmup_steps, weight_decay=train_cfg.weight_decay,
        grad_clip=train_cfg.grad_clip, schedule=train_cfg.schedule)
    parts = split_model(model, trainable)
    if train_cfg.frozen_dtype == "bfloat16":  # LoRA's base, a frozen backbone: half the memory
        parts = parts._replace(frozen=cast_floats(parts.frozen, jnp.bfloat16))
    state, frozen, state_sh, frozen_sh = init_train_state(parts, optimizer, mesh)
    compute = jnp.bfloat16 if train_cfg.compute_dtype == "bfloat16" else None
    step_fn = steps.jit_train_step(
        steps.make_train_step(parts.graphdef, task, optimizer, schedule=schedule,
                              compute_dtype=compute), mesh, state_sh, frozen_sh)
    batches = train_batches(lengths, collate, batch_size=train_cfg.batch_size // micro,
                            num_steps=num_steps, micro_batches=micro, seed=seed,
                            shard=sharding.process_block(mesh))
    log(name, f"{len(lengths)} examples, {num_steps} steps of {train_cfg.batch_size}, "
              f"{count_params(parts.params):,} trainable parameters")
    checkpointer = Checkpointer(os.path.join(workdir, "ckpt"), keep=train_cfg.keep_checkpoints)
    logger = MetricsLogger(workdir, name=name, total_steps=num_steps)
    try:
        state = loop.train(
            step_fn=step_fn, state=state, frozen=frozen, batches=batches, mesh=mesh,
            config=loop.LoopConfig(num_steps=num_steps, log_every=train_cfg.log_every,
                                   save_every=train_cfg.save_every, name=name),
            checkpointer=checkpointer, logger=logger, flops_per_token=flops_per_token,
            peak_flops=mesh_peak_flops(mesh, train_cfg.compute_dtype) if flops_per_token else 0.0)
    finally:
        logger.close()
        checkpointer.close()
    if train_cfg.frozen_dtype == "bfloat16":  # the model leaves in its own dtype (values rounded)
        frozen = cast_floats(frozen, jnp.float32)
    trained = nnx.merge(parts.graphdef, state.params, frozen, state.mutable)
    return models.unstack_layers(trained) if train_cfg.scan_layers else trained
