"""Every jitted program the configured pipeline runs, built from abstract shapes (nnx.eval_shape:
no weights, nothing allocated) and compiled ahead of time for a target mesh.

The programs are the ones the stages run, through the same code: the train steps come from
train.steps (annotator, SFT and alignment tasks from train.tasks), the passes from
stages.pair_passes' functions, the sampler from models.sampling. Batches are collated by the
data package's own collate functions from placeholder token ids at the longest shapes the
config's tokenizer limits allow, so a compiled shape is one the run can meet.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from cwpo_jax import models, sharding
from cwpo_jax.models import sampling
from cwpo_jax.models.checkpoint_hf import build_config
from cwpo_jax.models.layers import set_remat
from cwpo_jax.plan.architectures import hf_config
from cwpo_jax.train import optim, steps
from cwpo_jax.train.flops import matmul_params
from cwpo_jax.train.state import TrainState, cast_floats, split_model, variable_shardings


@dataclasses.dataclass
class Program:
    """One compiled program: per-device memory (bytes) from XLA's memory analysis, FLOPs per
    call (analytic, all devices), XLA's own cost analysis where the backend gives one."""

    name: str
    model: str
    tokens: int  # tokens per call (global; packed or padded slots the program computes)
    flops: float  # analytic model FLOPs per call, all devices together
    devices: int  # devices the program runs on
    weight_bytes: float = 0.0  # per device: parameters (and optimizer moments) read per call
    weight_reads: int = 1  # how often a call reads them (the sampler: once per token step)
    memory: dict = dataclasses.field(default_factory=dict)
    xla_flops: float | None = None  # per device, XLA's cost analysis (TPU)
    xla_bytes: float | None = None  # per device, bytes accessed (TPU)
    compile_s: float = 0.0
    error: str = ""  # the compiler's refusal (over-HBM on TPU), one line
    note: str = ""


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def _batch_struct(batch: dict, mesh: Mesh, leading: int = 0) -> dict:
    """numpy batch -> ShapeDtypeStructs sharded as sharding.shard_batch shards it (host-only
    bookkeeping keys dropped, as train/passes.py drops them)."""
    out = {}
    for key, value in batch.items():
        if key in ("pair_index", "index", "row_index"):
            continue
        value = np.asarray(value)
        shape = value.shape if leading == 0 else (1,) + value.shape
        sh = sharding.batch_sharding(mesh, len(shape), leading) if len(shape) > leading else \
            sharding.replicated(mesh)
        out[key] = jax.ShapeDtypeStruct(shape, value.dtype, sharding=sh)
    return out


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "host_temp_size_in_bytes", "host_argument_size_in_bytes")
    out = {f.replace("_size_in_bytes", ""): int(getattr(m, f, 0) or 0) for f in fields}
    peak = getattr(m, "peak_memory_in_bytes", 0) or 0
    # Without a peak (some backends): arguments + outputs not aliased to them + temporaries.
    out["peak"] = int(peak) or (out["argument"] + out["output"] - out["alias"] + out["temp"])
    return out


def _cost(compiled) -> tuple[float | None, float | None]:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # the GPU backend has none without a device
        return None, None
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    if not cost:
        return None, None
    return cost.get("flops"), cost.get("bytes accessed")


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    found = re.search(r"RESOURCE_EXHAUSTED:[^.]*(\.[^.]*){0,2}", text)
    return (found.group(0) if found else text)[:400]


# Without a GPU, XLA's GPU compiler skips autotuning, and its Triton GEMM emitter can then fail
# to tile a small dot ("Couldn't find output tile sizes"); such a program is compiled again
# with cuBLAS GEMMs instead, and says so.
_NO_TRITON_GEMM = {"xla_gpu_enable_triton_gemm": False}


def compile_lowered(program: Program, lower) -> Program:
    """lower().compile(), recording memory, cost and wall time; a refusal by the compiler (a TPU
    program over HBM) is recorded as program.error."""
    start = time.perf_counter()
    try:
        lowered = lower()
        try:
            compiled = lowered.compile()
        except Exception as e:
            if "output tile sizes" not in str(e):
                raise
            compiled = lowered.compile(compiler_options=dict(_NO_TRITON_GEMM))
            program.note = "; ".join(filter(None, [program.note, "cuBLAS GEMMs (Triton GEMM "
                                                   "tiling failed without autotuning)"]))
    except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED and friends
        program.compile_s = time.perf_counter() - start
        program.error = _one_line(e)
        return program
    program.compile_s = time.perf_counter() - start
    program.memory = _memory(compiled)
    program.xla_flops, program.xla_bytes = _cost(compiled)
    return program


def compile_program(program: Program, fn, *args) -> Program:
    return compile_lowered(program, lambda: jax.jit(fn).lower(*args))


# ------------------------------------------------------------------ models


def abstract_model(spec: str, *, reward: bool = False, lora=None, seed: int = 0):
    """(label, abstract model): parameters are ShapeDtypeStructs, as the stage would build it
    (float32 weights, as from_pretrained loads them)."""
    label, hf = hf_config(spec)

    def make():
        config, cls = build_config(hf)
        model = cls(config, rngs=nnx.Rngs(seed))
        if reward:
            model = models.RewardModel(model, rngs=nnx.Rngs(seed))
        if lora is not None:
            model = models.apply_lora(model, lora, rngs=nnx.Rngs(seed))
            model.train()
        return model

    return label, nnx.eval_shape(make)


def _param_bytes(tree, mesh: Mesh, shardings) -> float:
    """Bytes per device of a sharded tree (the largest shard of each leaf)."""
    total = 0.0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shard = s.shard_shape(x.shape) if isinstance(s, NamedSharding) else x.shape
        total += float(np.prod(shard)) * jnp.dtype(x.dtype).itemsize
    return total


# ------------------------------------------------------------------ train steps


def train_step(name: str, label: str, model, task, train_cfg, mesh: Mesh, batch: dict, *,
               trainable=nnx.Param, flops_per_token: float, tokens: int) -> Program:
    """The train step of train/fit.py for one micro-batch of `batch` (micro_batches of them
    per step: the program scans over the leading axis)."""
    if train_cfg.remat != "none":
        set_remat(model, train_cfg.remat)
    if train_cfg.scan_layers:  # traced, so the stacked weights stay abstract
        model = nnx.eval_shape(models.stack_layers, model)
    optimizer, schedule = optim.make_optimizer(
        learning_rate=train_cfg.learning_rate, total_steps=1000,
        warmup_steps=min(train_cfg.warmup_steps, 999), weight_decay=train_cfg.weight_decay,
        grad_clip=train_cfg.grad_clip, schedule=train_cfg.schedule)
    parts = split_model(model, trainable)
    if train_cfg.frozen_dtype == "bfloat16":  # as train/fit.py holds them
        parts = parts._replace(frozen=jax.eval_shape(
            lambda frozen: cast_floats(frozen, jnp.bfloat16), parts.frozen))
    param_sh = variable_shardings(parts.params, mesh)
    frozen_sh = variable_shardings(parts.frozen, mesh)
    params = _abstract(parts.params, param_sh)
    frozen = _abstract(parts.frozen, frozen_sh)
    # Each moment is sharded as its parameter (train/state.init_train_state: optimizer.init
    # under jit on the sharded params); counts and other scalars are replicated.
    opt_abstract = jax.eval_shape(optimizer.init, params)
    opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, opt_abstract, param_sh,
                                   transform_non_params=lambda _: sharding.replicated(mesh))
    opt_state = _abstract(opt_abstract, opt_sh)
    mutable_sh = jax.tree.map(lambda _: sharding.replicated(mesh), parts.mutable)
    mutable = _abstract(parts.mutable, mutable_sh)
    step_sh = sharding.replicated(mesh)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=step_sh), params, opt_state,
                       mutable)
    state_sh = TrainState(step_sh, param_sh, opt_sh, mutable_sh)
    compute = jnp.bfloat16 if train_cfg.compute_dtype == "bfloat16" else None
    step = steps.make_train_step(parts.graphdef, task, optimizer, schedule=schedule,
                                 compute_dtype=compute)
    micro = train_cfg.micro_batches
    batch_abs = _batch_struct(batch, mesh, leading=1)
    batch_abs = {k: jax.ShapeDtypeStruct((micro,) + v.shape[1:], v.dtype, sharding=v.sharding)
                 for k, v in batch_abs.items()}
    program = Program(name, label, tokens=tokens * micro, flops=flops_per_token * tokens * micro,
                      devices=mesh.devices.size,
                      weight_bytes=_param_bytes(params, mesh, param_sh)
                      + _param_bytes(frozen, mesh, frozen_sh)
                      + _param_bytes(opt_state, mesh, opt_sh))
    jitted = steps.jit_train_step(step, mesh, state_sh, frozen_sh)
    return compile_lowered(program, lambda: jitted.lower(state, frozen, batch_abs))


# ------------------------------------------------------------------ passes


def forward_pass(name: str, label: str, model, fn, mesh: Mesh, batch: dict, *,
                 flops_per_token: float, tokens: int) -> Program:
    """A train/passes.batched_pass program: fn(model, batch) jitted over the sharded state."""
    graphdef, state = nnx.split(model)
    state_sh = variable_shardings(state, mesh)
    program = Program(name, label, tokens=tokens, flops=flops_per_token * tokens,
                      devices=mesh.devices.size,
                      weight_bytes=_param_bytes(state, mesh, state_sh))
    return compile_program(program, sharding.mesh_context(
        lambda s, b: fn(nnx.merge(graphdef, s), b), mesh),
        _abstract(state, state_sh), _batch_struct(batch, mesh))


def sampler(name: str, label: str, model, mesh: Mesh, prompts: dict, *,
            max_new_tokens: int, eos_ids: tuple, pad: int) -> Program:
    """models.sampling's jitted prefill + decode loop as stages/sampling.py runs it: weights
    sharded over the mesh by their logical axes (shard_weights), prompts whole on every device,
    float32 weights as from_pretrained loads them."""
    graphdef, state = nnx.split(model)
    state_sh = variable_shardings(state, mesh)
    ids = prompts["input_ids"]
    b, p = ids.shape
    n = matmul_params(model, lm_head=True)
    program = Program(name, label, tokens=b * (p + max_new_tokens),
                      flops=2.0 * n * b * (p + max_new_tokens), devices=mesh.devices.size,
                      weight_bytes=_param_bytes(state, mesh, state_sh),
                      weight_reads=1 + max_new_tokens,
                      note=f"{b} prompts x ({p} + {max_new_tokens} new tokens), prompts on "
                           "every device")
    rep = sharding.replicated(mesh)
    args = (_abstract(state, state_sh),
            jax.ShapeDtypeStruct(ids.shape, jnp.int32, sharding=rep),
            jax.ShapeDtypeStruct(ids.shape, jnp.int32, sharding=rep),
            jax.ShapeDtypeStruct((b,), jax.random.key(0).dtype, sharding=rep),
            jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
            jax.ShapeDtypeStruct((), jnp.float32, sharding=rep))
    fn = functools.partial(sampling._generate.__wrapped__, graphdef, max_new_tokens=max_new_tokens,
                           eos_ids=eos_ids, pad_id=pad)
    return compile_program(program, fn, *args)
