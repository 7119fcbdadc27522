"""Hand heap memory that the process has freed back to the operating system (glibc Linux).

XLA:CPU and the model loaders allocate through malloc. glibc keeps freed heap pages resident
(it only gives back a free tail of the heap, and it raises its mmap threshold after the first
large free, so later large buffers come from the heap too). Measured with the SmolLM2-135M DPO
step (benchmarks/dpo_step.py, fp32, batch 4, 32 + 32): about 400 MiB stays resident after the
GGUF weights are dequantised and freed, and 180 MiB more after the compiling first step; the
step's peak RSS fell from 3487-3496 to 2933 MiB with one release at each of those two points.
Releasing on every free (a zero trim threshold or a fixed mmap threshold) saved 60 MiB more but
made the step ~20% slower, so the training loop releases at those two points only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_heap() -> bool:
    """Collect unreachable Python objects (they may hold arrays), then return every whole free
    heap page to the OS. True when glibc released memory, False when it had none to release or
    the C library has no malloc_trim. Takes milliseconds; call it after a phase that freed a lot
    (loading, the first compiling step), not in a hot loop."""
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
