"""docs/scaling.md: the plans of configs/scale.py's presets, one row per (student, target).

Each row compiles the student's SFT step (full fine-tuning, planned even where the preset turns
SFT off, to say whether it fits), its align step (CW-DPO, LoRA r=8) and the sampler, with the
preset's mesh (fsdp over every chip), remat and dtypes, for the target's compile-only devices
(launch/plan.py's programs). Needs requirements-aot.txt; about 25 minutes on 2 cores.

    python scripts/scaling_table.py --out=docs/scaling.md [--cells=llama3_8b:v5p-16,...]
"""
import argparse
import datetime
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "configs")]

CELLS = [("llama3_1b", t) for t in ("v5e-8", "h100x8")] + [
    (m, t) for m in ("qwen2p5_7b", "llama3_8b")
    for t in ("v5e-8", "v5e-64", "v5p-16", "v6e-8", "h100x8", "h200x8")] + [
    ("llama3_70b", t) for t in ("v5e-64", "v5p-64", "h200x8")]


def plan_cell(model: str, target_name: str):
    import scale

    from cwpo_jax import sharding
    from cwpo_jax.plan import pipeline, report, targets

    cfg = scale.get_config(f"{model},{target_name}")
    cfg.sft.enabled, cfg.sft.model = True, scale.STUDENTS[model][0]
    target = targets.parse_target(scale.TARGETS[target_name])
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor,
                              devices=targets.devices(target))
    start = time.perf_counter()
    programs = pipeline.plan_programs(cfg, mesh, stages=("sft", "align", "sampler"),
                                      log=lambda line: print(f"    {line.strip()}", flush=True))
    rows = {r.program.name.split(" (")[0]: r for r in report.rows(programs, target)}
    return target, dict(mesh.shape), rows, time.perf_counter() - start


def _gib(row) -> str:
    if row.peak_bytes is None:
        return "not compiled"
    return f"{'>= ' if row.program.error else ''}{row.peak_bytes / 2**30:.1f}" + (
        "" if row.fits else " (no)")


def main():
    import scale

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "scaling.md"))
    parser.add_argument("--cells", default="", help="model:target,... (default: all)")
    args = parser.parse_args()
    cells = [tuple(c.split(":")) for c in args.cells.split(",")] if args.cells else CELLS
    lines = []
    for model, target_name in cells:
        print(f"{model} on {target_name}", flush=True)
        target, mesh, rows, seconds = plan_cell(model, target_name)
        sft, align, sampler = rows["SFT step"], rows["align step"], rows["sampler"]
        preset = scale.get_config(f"{model},{target_name}")
        sft_cell = _gib(sft) + ("" if preset.sft.enabled else ", preset: SFT off")
        lines.append(
            f"| {align.program.model} | {target_name} ({target.name}) | fsdp {mesh['fsdp']}, "
            f"remat full, bf16 | {sft_cell} | {_gib(align)} | {_gib(sampler)} | "
            f"{align.tokens_per_s_chip:,.0f} | {sampler.tokens_per_s_chip:,.0f} | "
            f"{seconds:.0f} |")
    header = [
        "| student | target | mesh, remat, compute | SFT step GiB/chip | align step GiB/chip "
        "| sampler GiB/chip | align tokens/s/chip (roofline) | sampler tokens/s/chip "
        "(roofline) | compile s (3 programs, 2 cores) |",
        "|---|---|---|---|---|---|---|---|---|"]
    table = "\n".join(
        [f"Planned {datetime.date.today().isoformat()} by scripts/scaling_table.py on "
         f"{os.cpu_count()} CPU cores; compiler estimates, not measurements.", ""]
        + header + lines)
    write_between_markers(args.out, table)
    print(table)


START, END = "<!-- scaling_table:start -->", "<!-- scaling_table:end -->"


def write_between_markers(path: str, text: str) -> None:
    """Replace what lies between the markers in `path` (the rest is prose kept by hand)."""
    old = open(path).read() if os.path.exists(path) else f"{START}\n{END}\n"
    if START not in old or END not in old:
        raise SystemExit(f"{path}: no {START} ... {END} markers to write the table between")
    head, rest = old.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{START}\n{text}\n{END}{tail}")

if __name__ == "__main__":
    main()
