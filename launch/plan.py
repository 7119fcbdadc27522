"""Plan a run for accelerators this machine does not have: compile every jitted program of the
configured pipeline for a real TPU or GPU target, from abstract shapes, and report per-device
memory, whether it fits, FLOPs and a roofline bound.

    python launch/plan.py --config=configs/paper.py:hh_rlhf,qwen --target=tpu:v5e:2x4
    python launch/plan.py --config=configs/scale.py:llama3_8b,v5p-16 --target=v5p-16
    python launch/plan.py --config=configs/tiny.py --target=gpu:h100:1x1x2 --out=plan.json

Targets: tpu:CHIP:TOPOLOGY (v4, v5e, v5p, v6e; e.g. tpu:v5p:2x2x2), Cloud TPU names (v5e-16,
v5p-64), gpu:CHIP:SxHxD (a100, h100, h200; slices x hosts x GPUs per host). Needs the compilers
of requirements-aot.txt; no accelerator, weights or network. Exit status 0 when every program
fits, 3 when one does not (one line on stderr names it and what to change), 1 on bad input.
"""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host backend only; targets are compile-only

import _cli  # noqa: E402,F401  (puts the checkout on sys.path)

DOES_NOT_FIT = 3


def main(argv) -> None:
    import json
    import time

    from absl import flags

    from cwpo_jax import sharding
    from cwpo_jax.plan import pipeline, report, targets
    from cwpo_jax.stages.config import ConfigError, validate

    f = flags.FLAGS
    cfg = f.config
    if cfg is None:
        sys.exit("missing --config=configs/<preset>.py")
    try:
        target = targets.parse_target(f.target, f.num_slices)
        validate(_with_placeholders(cfg), num_devices=target.num_devices)
        stages = tuple(s for s in f.stages.split(",") if s)
        unknown = sorted(set(stages) - set(pipeline.STAGES))
        if unknown:
            raise ValueError(f"--stages: unknown {unknown}; expected some of {pipeline.STAGES}")
        devices = targets.devices(target)
        mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    except (targets.TargetError, ConfigError, ValueError) as e:
        sys.exit(" ".join(str(e).split()))
    if cfg.evaluate.gold_judge == "none":  # no GRA: the evaluation samples nothing
        stages = tuple(s for s in stages or pipeline.STAGES if s != "sampler")
    print(f"planning {_config_arg(argv)} for {target.name}: mesh {dict(mesh.shape)}; "
          "compiling ...", flush=True)
    start = time.perf_counter()
    try:
        programs = pipeline.plan_programs(cfg, mesh, stages=stages or pipeline.STAGES)
    except (ValueError, FileNotFoundError) as e:  # a model spec the planner cannot resolve
        sys.exit(f"plan: {' '.join(str(e).split())}")
    rows = report.rows(programs, target)
    print()
    print(report.table(target, rows))
    print(f"\n{len(programs)} programs compiled in {time.perf_counter() - start:.0f} s on this "
          f"machine ({os.cpu_count()} cores).")
    if f.out:
        with open(f.out, "w") as fh:
            json.dump(report.as_json(target, rows, _config_arg(argv)), fh, indent=1)
        print(f"wrote {f.out}")
    line = report.refusal(target, rows)
    if line:
        print(line, file=sys.stderr)
        sys.exit(DOES_NOT_FIT)


def _with_placeholders(cfg):
    """A copy of cfg for validation: a plan writes no run folder and reads no data, so an unset
    output_dir, data.path or evaluate.gold_judge is filled in (a run still has to set them)."""
    import copy

    check = copy.deepcopy(cfg)
    check.output_dir = check.output_dir or "unused-by-plan"
    if check.data.source == "file":
        check.data.path = check.data.path or "unused-by-plan"
        check.evaluate.gold_judge = check.evaluate.gold_judge or "lexicon"
    return check


def _config_arg(argv) -> str:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "preset file, e.g. configs/tiny.py",
                                    lock_config=True)
    flags.DEFINE_string("target", None, "tpu:v5e:2x4, v5p-16, gpu:h100:1x1x8, ...")
    flags.DEFINE_integer("num_slices", 1, "TPU slices (multi-slice)")
    flags.DEFINE_string("stages", "", "comma-separated subset of "
                        "annotator,score,sft,reference,align,sampler (default: all)")
    flags.DEFINE_string("out", "", "write the report as JSON here")
    flags.mark_flag_as_required("target")
    argv = sys.argv
    _cli._parse_flags(argv)
    main(argv)
