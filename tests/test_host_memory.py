"""release_freed_heap gives freed heap pages back to the OS, and the loop calls it where the
host frees most: before the first step (after loading) and after the compiling first step."""
import sys

import pytest

from cwpo_jax import host_memory


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory._malloc_trim() is None,
                    reason="needs Linux /proc and glibc's malloc_trim")
def test_release_returns_fragmented_heap_to_the_os():
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); keeping every 16th one
    # pins the heap's top, so glibc's own trimming of the free tail cannot return the rest.
    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MiB, touched
    kept = blocks[::16]
    del blocks
    before = rss_mb()
    assert host_memory.release_freed_heap()
    assert before - rss_mb() > 100, f"RSS {before:.0f} -> {rss_mb():.0f} MiB"
    assert all(len(b) == 64 * 1024 for b in kept)  # what is still referenced stays intact


def test_release_without_malloc_trim_is_a_no_op(monkeypatch):
    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: None)
    assert host_memory.release_freed_heap() is False
