"""Multi-process plumbing shared by training, passes and stages: log lines, barriers, gathers."""
from __future__ import annotations

import sys

import jax
import numpy as np


def log(name: str, message: str) -> None:
    """One "[name] message" line on stderr, from process 0 only (not once per host)."""
    if jax.process_index() == 0:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)


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
