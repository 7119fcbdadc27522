"""Where a jitted program's time goes: a `jax.profiler` trace of a few calls, summed per XLA
instruction (mostly fusions) and labelled from the compiled HLO with what each one does and, for
matmuls, the GFLOP/s it reached.

    rows, wall_s = profile(call, compiled.as_text(), calls=3, trace_dir=DIR)
    print(format_table(rows, wall_s, calls=3))

`call()` runs the program once and blocks on its outputs (thread donated state through it).
On a multi-core CPU two independent instructions can run at once, each on fewer threads, so the
per-instruction times may sum to more than the wall time; the totals say so. Used by
`dpo_step.py --profile=DIR`; the trace in DIR also opens in Perfetto / TensorBoard.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import time

import jax

_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+) .*\{\s*$")
CONTROL_FLOW = ("while", "conditional", "call")  # their bodies' instructions are traced too


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    kind: str  # matmul | batched matmul | copy/transpose | reduction | elementwise | <opcode>
    flops: float  # of its dots; 0 for the rest
    shape: str


@dataclasses.dataclass
class Row:
    name: str
    kind: str
    shape: str
    ms_per_call: float
    gflops_per_s: float | None


def _computations(hlo_text: str) -> dict[str, list[str]]:
    comps, current = {}, None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = comps.setdefault(header.group(1), [])
        elif current is not None and line.strip() not in ("", "}"):
            current.append(line)
    return comps


def _dot_flops(line: str, dims: dict[str, list[int]]) -> float:
    """2 x output elements x contracted size of one `dot` line."""
    m = _LINE.match(line)
    out = [int(d) for d in m.group(3).split(",") if d]
    lhs = re.match(r"\s*%?([\w.\-]+)", m.group(5)).group(1)
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
    if lhs not in dims or not contracting:
        return 0.0
    k = math.prod(dims[lhs][int(i)] for i in contracting.group(1).split(",") if i)
    return 2.0 * math.prod(out) * k


def _describe(lines: list[str]) -> tuple[str, float]:
    """(kind, dot flops) of a fused computation's body."""
    dims, opcodes, flops, batched = {}, collections.Counter(), 0.0, False
    for line in lines:
        m = _LINE.match(line)
        if not m:
            continue
        dims[m.group(1)] = [int(d) for d in m.group(3).split(",") if d]
        opcodes[m.group(4)] += 1
        if m.group(4) == "dot":
            flops += _dot_flops(line, dims)
            batched |= "lhs_batch_dims" in line
    if flops:
        return ("batched matmul" if batched else "matmul"), flops
    if opcodes["reduce"]:
        return "reduction", 0.0
    moves = {"transpose", "copy", "bitcast", "parameter", "broadcast", "slice", "concatenate"}
    if opcodes and set(opcodes) <= moves:
        return "copy/transpose", 0.0
    return "elementwise", 0.0


def hlo_instructions(hlo_text: str) -> dict[str, Instruction]:
    """Every instruction the runtime executes (fusions, loose ops, loop bodies' ops) by name."""
    comps = _computations(hlo_text)
    # Bodies of fusions run inside their fusion's event: index the fusion, not its insides.
    fused = set(re.findall(r" fusion\(.*calls=%?([\w.\-]+)", hlo_text))
    out = {}
    for comp, lines in comps.items():
        if comp in fused:
            continue
        dims = {}
        for line in lines:
            m = _LINE.match(line)
            if not m:
                continue
            name, opcode = m.group(1), m.group(4)
            dims[name] = [int(d) for d in m.group(3).split(",") if d]
            shape = f"{m.group(2)}[{m.group(3)}]"
            if opcode == "fusion":
                called = re.search(r"calls=%?([\w.\-]+)", line)
                kind, flops = _describe(comps.get(called.group(1), [])) if called else ("?", 0.0)
            elif opcode == "dot":
                kind = "batched matmul" if "lhs_batch_dims" in line else "matmul"
                flops = _dot_flops(line, dims)
            else:
                kind, flops = opcode, 0.0
            out[name] = Instruction(name, opcode, kind, flops, shape)
    return out


def trace_times_us(trace_dir: str) -> collections.Counter:
    """Total duration (µs) per event name in the newest trace under trace_dir."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    totals = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            totals[e["name"]] += e.get("dur", 0)
    return totals


def profile(call, hlo_text: str, *, calls: int, trace_dir: str) -> tuple[list[Row], float]:
    """Trace `calls` runs of call(); rows sorted by time, and the wall seconds per call."""
    instructions = hlo_instructions(hlo_text)
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    try:
        for _ in range(calls):
            call()
    finally:
        wall_s = (time.perf_counter() - start) / calls
        jax.profiler.stop_trace()
    rows = []
    for name, us in trace_times_us(trace_dir).items():
        inst = instructions.get(name)
        if inst is None or inst.opcode in CONTROL_FLOW:
            continue
        ms = us / 1e3 / calls
        rate = inst.flops / (ms / 1e3) / 1e9 if inst.flops and ms else None
        rows.append(Row(name, inst.kind, inst.shape, ms, rate))
    if not rows:
        raise RuntimeError("the trace holds no instruction of the compiled program: is `call` "
                           "running the program compiled from this HLO?")
    return sorted(rows, key=lambda r: -r.ms_per_call), wall_s


def summarize(rows: list[Row]) -> dict[str, float]:
    """ms per call by kind."""
    by_kind = collections.Counter()
    for r in rows:
        by_kind[r.kind] += r.ms_per_call
    return dict(by_kind.most_common())


def format_table(rows: list[Row], wall_s: float, *, calls: int, top: int = 25) -> str:
    total = sum(r.ms_per_call for r in rows)
    lines = [f"profile: {calls} calls, {wall_s * 1e3:.1f} ms wall per call, "
             f"{total:.1f} ms summed over instructions (concurrent ones overlap)",
             "by kind (ms per call): " + ", ".join(f"{k} {v:.1f}"
                                                   for k, v in summarize(rows).items()),
             f"{'ms':>8} {'GFLOP/s':>8}  {'kind':<15} {'shape':<28} instruction"]
    for r in rows[:top]:
        rate = f"{r.gflops_per_s:8.1f}" if r.gflops_per_s else f"{'':>8}"
        lines.append(f"{r.ms_per_call:8.2f} {rate}  {r.kind:<15} {r.shape[:28]:<28} {r.name}")
    return "\n".join(lines)
