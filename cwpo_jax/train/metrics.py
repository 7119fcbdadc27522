"""Metrics to JSONL and TensorBoard, a progress line with ETA, and throughput / MFU accounting."""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp


def measure_matmul_peak(size: int | None = None, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of a jitted square matmul on one device (the default one), measured now: the MFU
    denominator per device.

    The operands are random: accelerators multiply constant data faster. The default size is
    2048 on CPU and 8192 on accelerators, where a 2048 product (17 GFLOP, ~25 us on an H100-class
    GPU) lasts about as long as its dispatch and would understate the peak."""
    if size is None:
        size = 2048 if jax.default_backend() == "cpu" else 8192
    x = jax.random.normal(jax.random.key(0), (size, size), dtype)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsLogger:
    """Writes every logged step to <dir>/metrics.jsonl and TensorBoard, and prints progress.

    Only process 0 writes; other hosts log nothing (their metrics are the same global values).
    """

    def __init__(self, directory: str, *, name: str, total_steps: int, tensorboard: bool = True,
                 stream=sys.stderr):
        self.name, self.total_steps, self.stream = name, total_steps, stream
        self.enabled = jax.process_index() == 0
        self.start = time.perf_counter()
        self.start_step = None
        self.writer = None
        if not self.enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self.jsonl = open(os.path.join(directory, "metrics.jsonl"), "a", encoding="utf-8")
        self.tensorboard_dir = os.path.join(directory, "tensorboard") if tensorboard else None

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is None and self.tensorboard_dir is not None:
            from tensorboardX import SummaryWriter  # optional at import time of the package

            # Opened at the first logged step: after a resume, events a killed run wrote for
            # this step and later are purged, so TensorBoard shows each step once.
            self.writer = SummaryWriter(self.tensorboard_dir, purge_step=step)
        if self.writer is not None:
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(f"{self.name}/{key}", value, step)
        self.progress(step, record)

    def progress(self, step: int, record: dict) -> None:
        if self.start_step is None:
            self.start_step, self.start = step - 1, time.perf_counter()
        elapsed = time.perf_counter() - self.start
        done = step - self.start_step
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        shown = []
        for key in ("loss", "rewards/accuracies", "grad_norm", "tokens_per_s", "mfu"):
            if key in record:
                value = record[key]
                shown.append(f"{key} {value:.1%}" if key == "mfu" else f"{key} {value:.4g}")
        pct = 100 * step / max(self.total_steps, 1)
        print(f"[{self.name}] step {step}/{self.total_steps} ({pct:.0f}%) " + " | ".join(shown)
              + f" | ETA {format_seconds(eta)}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
