"""The plan's report: per program, memory against the chip, a roofline bound on its time, and
the refusal of a configuration that does not fit. Every figure is a compiler estimate or a
count, never a measurement."""
from __future__ import annotations

import dataclasses
import re

from cwpo_jax.plan.programs import Program
from cwpo_jax.plan.targets import GIB, GPU_MEMORY_FRACTION, Target

# What shrinks each program's per-device memory, by the config fields that reach it.
REMEDIES = {
    "annotator step": "mesh.fsdp over more chips, annotator.train.remat=full, "
                      "annotator.train.micro_batches, a shorter data.max_len",
    "scoring pass": "mesh.fsdp over more chips, a smaller score.batch_size, a shorter "
                    "data.max_len",
    "SFT step": "mesh.fsdp over more chips, sft.train.remat=full, sft.train.micro_batches, "
                "sft.train.compute_dtype=bfloat16, a shorter data.max_len",
    "reference pass": "mesh.fsdp over more chips, a smaller align.logprob_batch_size, "
                      "align.chunk_size",
    "align step": "mesh.fsdp over more chips, align.train.remat=full, align.train.micro_batches, "
                  "align.lora_rank > 0, align.chunk_size, a shorter data.max_len",
    "sampler": "mesh.fsdp or mesh.tensor over more chips, a smaller evaluate.batch_size or "
               "evaluate.max_new_tokens",
}


def _remedy(name: str) -> str:
    return next((v for k, v in REMEDIES.items() if name.startswith(k)), "a larger mesh")


def _hbm_used(error: str) -> float | None:
    """Bytes the TPU compiler said a refused program needs at least: 'memory required for HLO
    temporaries (37.31G) exceeds available HBM' or 'Used 23.41G of 15.75G hbm'."""
    m = (re.search(r"\(([\d.]+)([KMGT])\) exceeds available HBM", error)
         or re.search(r"Used ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm", error))
    if not m:
        return None
    return float(m.group(1)) * 1024 ** " KMGT".index(m.group(2))


@dataclasses.dataclass
class Row:
    program: Program
    peak_bytes: float | None
    fits: bool
    step_s: float  # roofline bound, seconds per call
    bound: str  # "compute" | "memory"
    tokens_per_s_chip: float
    mfu_ceiling: float


def roofline(program: Program, target: Target) -> tuple[float, str]:
    """max(FLOPs / peak, bytes / bandwidth) per device. FLOPs: the analytic count (the model's
    matmuls); bytes: XLA's bytes accessed where it gives them (TPU), else the weights (and
    optimizer moments) each call must read, per generated token for the sampler."""
    chip = target.chip
    flops = program.flops / program.devices
    if program.weight_reads > 1:  # the sampler: every decode step reads every weight
        bytes_ = program.weight_bytes * program.weight_reads
    else:
        bytes_ = program.xla_bytes if program.xla_bytes else program.weight_bytes
    compute_s, memory_s = flops / chip.peak_bf16_flops, bytes_ / chip.memory_bandwidth
    return (compute_s, "compute") if compute_s >= memory_s else (memory_s, "memory")


def rows(programs: list[Program], target: Target) -> list[Row]:
    out = []
    for p in programs:
        peak = p.memory.get("peak") if p.memory else _hbm_used(p.error)
        fits = not p.error and peak is not None and peak <= target.usable_bytes
        step_s, bound = roofline(p, target)
        flops_s = p.flops / p.devices / step_s if step_s else 0.0
        out.append(Row(p, peak, fits, step_s, bound, p.tokens / step_s / p.devices if step_s
                       else 0.0, flops_s / target.chip.peak_bf16_flops))
    return out


def table(target: Target, report_rows: list[Row]) -> str:
    chip = target.chip
    usable = (f"{chip.memory_bytes / GIB:.1f} GiB x {GPU_MEMORY_FRACTION:.2f} (JAX's default "
              f"preallocation) = {target.usable_bytes / GIB:.1f} GiB" if chip.platform == "gpu"
              else f"{chip.memory_bytes / GIB:.1f} GiB HBM")
    head = [f"Plan for {target.name}: {target.num_devices} x {chip.name} ({usable} per device; "
            f"{chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16, "
            f"{chip.memory_bandwidth / 1e9:.0f} GB/s; {chip.source}).",
            "Compiler estimates and counts, not measurements.", "",
            "| program | model | devices | peak GiB/device (args + temp) | fits | TFLOP/call | "
            "roofline ms/call | bound | tokens/s/chip | MFU ceiling | compile s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines = []
    for r in report_rows:
        p = r.program
        if p.memory:
            mem = (f"{r.peak_bytes / GIB:.2f} ({p.memory['argument'] / GIB:.2f} + "
                   f"{p.memory['temp'] / GIB:.2f})")
        elif r.peak_bytes is not None:
            mem = f">= {r.peak_bytes / GIB:.2f} (refused by the compiler)"
        else:
            mem = "not compiled"
        lines.append(
            f"| {p.name} | {p.model} | {p.devices} | {mem} | {'yes' if r.fits else 'NO'} | "
            f"{p.flops / 1e12:.3g} | {r.step_s * 1e3:.3g} | {r.bound} | "
            f"{r.tokens_per_s_chip:,.0f} | {r.mfu_ceiling:.0%} | {p.compile_s:.1f} |")
    notes = [f"- {r.program.name}: {r.program.note}" for r in report_rows if r.program.note]
    errors = [f"- {r.program.name}: {r.program.error}" for r in report_rows if r.program.error]
    return "\n".join(head + lines + ([""] + notes if notes else [])
                     + ([""] + errors if errors else []))


def refusal(target: Target, report_rows: list[Row]) -> str | None:
    """One line for the first program that does not fit, or None."""
    for r in report_rows:
        if r.fits:
            continue
        p = r.program
        need = f"{'at least ' if p.error else ''}{r.peak_bytes / GIB:.1f} GiB per device" \
            if r.peak_bytes else \
            f"a program the compiler refused ({p.error[:120]})"
        return (f"plan: {p.name} of {p.model} does not fit {target.name}: it needs {need}, a "
                f"{target.chip.name} has {target.usable_bytes / GIB:.1f} GiB usable; try "
                f"{_remedy(p.name)}")
    return None


def as_json(target: Target, report_rows: list[Row], config: str) -> dict:
    chip = target.chip
    return {
        "config": config, "target": target.name, "devices": target.num_devices,
        "chip": {"name": chip.name, "memory_bytes": chip.memory_bytes,
                 "usable_bytes": target.usable_bytes, "peak_bf16_flops": chip.peak_bf16_flops,
                 "memory_bandwidth": chip.memory_bandwidth, "source": chip.source},
        "estimates": "compiler estimates and analytic counts, not measurements",
        "programs": [{**dataclasses.asdict(r.program), "peak_bytes": r.peak_bytes,
                      "fits": r.fits, "roofline_s": r.step_s, "bound": r.bound,
                      "tokens_per_s_per_chip": r.tokens_per_s_chip,
                      "mfu_ceiling": r.mfu_ceiling} for r in report_rows],
    }
