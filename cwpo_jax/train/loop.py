"""The training loop: feed batches, step, log, checkpoint, resume, stop on NaN or SIGTERM."""
from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import jax
import numpy as np

from cwpo_jax import sharding
from cwpo_jax.host_memory import release_freed_heap
from cwpo_jax.io_utils import atomic_open
from cwpo_jax.train.checkpoint import Checkpointer
from cwpo_jax.train.feeder import count_tokens
from cwpo_jax.train.metrics import MetricsLogger


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/inf. The step was not applied; the loop notices at the
    next log or save step and stops without checkpointing the steps after it."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint of the last finished step was written."""


class BatchIterator(Protocol):
    """This process's rows of each step's batch (dicts of numpy arrays, leading micro-batch
    axis; sharding.shard_batch) with resumable state."""

    def __next__(self) -> dict: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


class PreemptionGuard:
    """Turns SIGTERM into a flag checked between steps, so the step in flight finishes first.

    On several processes JAX's preemption service owns SIGTERM (no Python handler is set, which
    would replace it): a notice to any host reaches all of them, and Orbax's
    `reached_preemption(step)` turns true on every host at the same step, so all join the same
    collective save."""

    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer = checkpointer
        self.multihost = jax.process_count() > 1
        self.requested = False
        self._previous = None

    def __enter__(self):
        if not self.multihost:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def reached(self, step: int) -> bool:
        """Called once per step on every host."""
        if self.multihost:
            return self.checkpointer.manager.reached_preemption(step)
        return self.requested

    def __exit__(self, *exc):
        if not self.multihost:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _forget_records_after(logger: MetricsLogger, step: int) -> None:
    """On resume, drop the metrics.jsonl records of steps after the restored checkpoint (a
    killed run logged them; they are about to be logged again) and a torn last line, so the
    file keeps one record per step."""
    f = getattr(logger, "jsonl", None)
    if f is None or f.closed:
        return
    f.flush()
    with open(f.name, encoding="utf-8") as r:
        lines = r.readlines()
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn by a kill or a full disk mid-write
        if isinstance(record, dict) and record.get("step", 0) <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) != len(lines):
        f.close()
        with atomic_open(f.name) as out:
            out.writelines(keep)
        logger.jsonl = open(f.name, "a", encoding="utf-8")  # noqa: SIM115  (the logger closes it)


def _all_processes(real: int, padded: int, mesh) -> tuple[float, float]:
    """Token counts of this process's rows -> of the global batches (summed over the processes
    that supply distinct rows). Called at log steps only: it is a host sync."""
    if jax.process_count() == 1:
        return real, padded
    from jax.experimental import multihost_utils

    counts = np.asarray(multihost_utils.process_allgather(np.asarray([real, padded], np.float32)))
    _, blocks = sharding.process_block(mesh)
    total = counts.sum(axis=0) * blocks / jax.process_count()  # processes sharing a block
    return float(total[0]), float(total[1])


@dataclass
class LoopConfig:
    num_steps: int
    log_every: int = 1
    save_every: int = 0  # 0: only at the end (and on SIGTERM)
    name: str = "train"


def train(*, step_fn: Callable, state, frozen, batches: BatchIterator, mesh, config: LoopConfig,
          checkpointer: Checkpointer, logger: MetricsLogger,
          tokens_in_batch: Callable[[dict], tuple[int, int]] = count_tokens,
          flops_per_token: float = 0.0, peak_flops: float = 0.0,
          extra_state: Callable[[], dict] = dict):
    """Run until config.num_steps. Resumes from the newest checkpoint in `checkpointer` if any.

    tokens_in_batch(batch) -> (real tokens, padded tokens) of this process's rows, for
    throughput (summed over processes at log steps); MFU is
    flops_per_token * real tokens/s / peak_flops. Returns the final state.
    """
    step = 0
    latest = checkpointer.latest_step()
    if latest is not None:
        state, extra, step = checkpointer.restore(state)
        if {"epoch", "position"} <= set(extra.get("data", {})):
            # The in-memory feeder's state, from before the grain data path.
            raise ValueError(
                f"checkpoint {checkpointer.directory}/{step} stores data state "
                f"{extra.get('data')!r}, not a grain iterator's (next_index): it was written "
                "by an older cwpo_jax; finish that run with the version that started it, or "
                "move the ckpt folder aside to restart this stage")
        batches.set_state(extra["data"])
        if jax.process_index() == 0:
            print(f"[{config.name}] resumed from {checkpointer.directory}/{step}", file=sys.stderr)
        _forget_records_after(logger, step)
    if step >= config.num_steps:
        return state

    # Metrics of the steps since the last host read, still on the device: reading them every
    # step would stall the host until the device finishes, so the next batch could not be
    # prepared meanwhile. They are read at log steps and before every save.
    pending: list[tuple[int, dict]] = []

    def read_pending() -> dict:
        """The newest step's metrics as floats; NonFiniteError if any pending step was not
        finite (the step function skipped it on device and left the state as it was)."""
        values = jax.device_get([m for _, m in pending])
        bad = [(s, v) for (s, _), v in zip(pending, values) if not v["finite"]]
        pending.clear()
        if bad:
            first, v = bad[0]
            kept = checkpointer.latest_step()
            raise NonFiniteError(
                f"[{config.name}] step {first}: loss {float(v['loss'])} / grad norm "
                f"{float(v['grad_norm'])} is not finite; stopped without applying it. "
                f"Last good checkpoint: "
                f"{'none' if kept is None else f'{checkpointer.directory}/{kept}'} "
                f"(seen at step {step}, the next log or save step; {len(bad)} step(s) not "
                f"finite since the previous one)")
        return {k: float(x) for k, x in values[-1].items()} if values else {}

    def save(at_step):
        read_pending()  # never checkpoint a run that has seen a non-finite step
        checkpointer.save(at_step, state, {"data": batches.get_state(), **extra_state()})

    # Loading (a GGUF's dequantisation, HF conversion) and restoring freed much more than they
    # keep; hand those pages back before the steps (host_memory: -400 MiB RSS for SmolLM2).
    release_freed_heap()
    first_step = step
    window_tokens, window_padded, window_start = 0, 0, time.perf_counter()
    with PreemptionGuard(checkpointer) as guard:
        while step < config.num_steps:
            host_batch = next(batches)
            real, padded = tokens_in_batch(host_batch)
            state, metrics = step_fn(state, frozen, sharding.shard_batch(host_batch, mesh, 1))
            window_tokens += real
            window_padded += padded
            step += 1
            pending.append((step, metrics))
            if step == first_step + 1:
                release_freed_heap()  # what compiling the step freed (-180 MiB for SmolLM2)
            if step % config.log_every == 0 or step == config.num_steps:
                record = read_pending()
                window_tokens, window_padded = _all_processes(window_tokens, window_padded, mesh)
                elapsed = time.perf_counter() - window_start
                record["tokens_per_s"] = window_tokens / elapsed
                record["padded_tokens_per_s"] = window_padded / elapsed
                record["padding_share"] = 1.0 - window_tokens / max(window_padded, 1)
                if flops_per_token and peak_flops:
                    record["mfu"] = flops_per_token * record["tokens_per_s"] / peak_flops
                logger.log(step, record)
                window_tokens, window_padded, window_start = 0, 0, time.perf_counter()
            if config.save_every and step % config.save_every == 0:
                save(step)
            if guard.reached(step):
                if checkpointer.latest_step() != step:
                    save(step)
                raise Preempted(f"[{config.name}] SIGTERM: checkpoint written at step {step} in "
                                f"{checkpointer.directory}; rerun the same command to resume")
    if checkpointer.latest_step() != step:
        save(step)
    return state
