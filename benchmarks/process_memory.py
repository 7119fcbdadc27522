"""This process's resident memory, from Linux's /proc/self: the current RSS (VmRSS), its
high-water mark (VmHWM), and a window that measures the high-water mark of one stretch of work.

StepWindow resets the kernel's high-water mark to the current RSS when it opens (writing "5" to
/proc/self/clear_refs) and reads VmHWM when it closes, so the peak covers only what ran between
the two. The reset also lowers getrusage's ru_maxrss, so the window reads the whole-process peak
before the reset and again at the end (`process_peak_mb`). Without a writable clear_refs (not
Linux, an old kernel, some sandboxes) the window reports None and says why.

Imports nothing heavy: compare_trl's PyTorch subprocess uses it too.
"""
from __future__ import annotations

import resource


def status_mb(field: str) -> float | None:
    """A `kB` line of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def maxrss_mb() -> float:
    """getrusage's ru_maxrss of this process (kB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> str | None:
    """Set this process's VmHWM to its current RSS. None when done, else the reason it was not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        return f"/proc/self/clear_refs not writable ({e.strerror or e})"
    hwm, rss = status_mb("VmHWM"), status_mb("VmRSS")
    if hwm is None or rss is None:
        return "no VmHWM / VmRSS in /proc/self/status"
    if hwm > rss + 16:  # a few MiB may be touched between the two reads
        return f"clear_refs did not reset VmHWM ({hwm:.0f} MiB against VmRSS {rss:.0f} MiB)"
    return None


class StepWindow:
    """open() right before the timed steps, close() right after them; then `fields()`:
    step_peak_rss_mb (VmHWM over the window), resident_before_steps_mb (VmRSS right after the
    reset) and step_peak_note (None, or why step_peak_rss_mb is None). `process_peak_mb` is the
    whole run's peak by `process_peak` (ru_maxrss or VmHWM), read before the reset lowers it and
    again on close."""

    def __init__(self, process_peak=maxrss_mb):
        self.process_peak = process_peak
        self.before_mb = self.peak_mb = self.note = None
        self.process_peak_mb = 0.0

    def open(self) -> None:
        self.process_peak_mb = self.process_peak() or 0.0
        self.note = reset_peak()
        self.before_mb = status_mb("VmRSS")

    def close(self) -> None:
        self.peak_mb = status_mb("VmHWM") if self.note is None else None
        # (ru_maxrss and VmHWM may differ by a few pages: the kernel sums RSS counters lazily.)
        self.process_peak_mb = max(self.process_peak_mb, self.process_peak() or 0.0,
                                   self.peak_mb or 0.0)

    def fields(self) -> dict:
        return {"step_peak_rss_mb": self.peak_mb, "resident_before_steps_mb": self.before_mb,
                "step_peak_note": self.note}
