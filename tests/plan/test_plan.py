"""launch/plan.py: target names, the pipeline's programs compiled for real TPU and GPU targets
from abstract shapes, their memory report, FLOP counts against XLA's, and one-line refusals."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from cwpo_jax import sharding
from cwpo_jax.plan import pipeline, report, targets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name, expected, devices", [
    ("tpu:v5e:2x4", "tpu:v5e:2x4", 8),
    ("v5e-16", "tpu:v5e:4x4", 16),
    ("tpu:v6e-64", "tpu:v6e:8x8", 64),
    ("v5p-8", "tpu:v5p:2x2x1", 4),  # v5p-N counts TensorCores: 8 cores = 4 chips
    ("v5p-16", "tpu:v5p:2x2x2", 8),
    ("v5p-64", "tpu:v5p:2x4x4", 32),
    ("v5e-1", "tpu:v5e:1x1", 1),
    ("gpu:h100:1x1x8", "gpu:h100:1x1x8", 8),
    ("gpu:h200:2x1x8", "gpu:h200:2x1x8", 16),
])
def test_target_names_translate_to_topologies(name, expected, devices):
    target = targets.parse_target(name)
    assert (target.name, target.num_devices) == (expected, devices)


@pytest.mark.parametrize("name, words", [
    ("tpu:h100:2x2", "GPU chip"), ("v5e:2", "topology"), ("v5p-12", "TensorCores"),
    ("gpu:h100:8", "SxHxD"), ("x100:1x1", "expected tpu:CHIP"),
])
def test_bad_targets_are_refused_by_name(name, words):
    with pytest.raises(targets.TargetError, match=words):
        targets.parse_target(name)


def _tiny_config():
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    try:
        import tiny
    finally:
        sys.path.pop(0)
    cfg = tiny.get_config()
    cfg.mesh.data, cfg.mesh.fsdp = 1, 2
    return cfg


def _mesh(name, cfg):
    devices = targets.devices(targets.parse_target(name))
    return sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)


@pytest.mark.parametrize("name", ["tpu:v5e:2x2", "gpu:h100:1x1x2"])
def test_tiny_llama_programs_compile_sharded_with_a_memory_report(name):
    cfg = _tiny_config()
    target = targets.parse_target(name)
    mesh = _mesh(name, cfg)
    programs = pipeline.plan_programs(cfg, mesh, stages=("score", "align", "sampler"),
                                      log=lambda _: None)
    assert [p.name.split(" (")[0] for p in programs] == ["scoring pass", "align step", "sampler"]
    for p in programs:
        assert not p.error, p.error
        assert p.memory["peak"] > 0 and p.memory["argument"] > 0, p.memory
        assert p.flops > 0 and p.compile_s > 0
    align = programs[1]
    assert align.devices == 2
    # fsdp=2 holds half of every matrix (and its two Adam moments) on each device.
    _, model = pipeline.programs.abstract_model(cfg.sft.model)
    total = sum(np.prod(x.shape) * 4 for x in jax.tree.leaves(nnx.state(model)))
    assert align.weight_bytes < 0.65 * 3 * total
    rows = report.rows(programs, target)
    assert all(r.fits and r.step_s > 0 and r.tokens_per_s_chip > 0 for r in rows)
    assert report.refusal(target, rows) is None
    text = report.table(target, rows)
    assert "not measurements" in text and "align step" in text


def test_tpu_flop_count_agrees_with_train_flops():
    """XLA's FLOPs of the SFT step (per device, x devices) against train/flops.py's 6 N per
    token: within 10% (XLA also counts attention scores and the elementwise ops)."""
    cfg = _tiny_config()
    (sft,) = pipeline.plan_programs(cfg, _mesh("tpu:v5e:2x2", cfg), stages=("sft",),
                                    log=lambda _: None)
    assert sft.xla_flops is not None
    assert abs(sft.xla_flops * sft.devices - sft.flops) / sft.flops < 0.10


@pytest.mark.parametrize("name", ["tpu:v5e:2x2", "gpu:h100:1x1x2"])
def test_oversized_align_step_is_refused_in_one_line(name, tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "plan.py"), "--config=configs/tiny.py",
         f"--target={name}", "--stages=align", "--config.mesh.data=1", "--config.mesh.fsdp=2",
         "--config.data.max_len=2048", "--config.align.train.batch_size=1024",
         "--config.align.train.micro_batches=1", f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("plan:")]
    assert len(refusals) == 1, proc.stderr[-2000:]
    assert "align step" in refusals[0] and "does not fit" in refusals[0]
    assert "align.train.remat" in refusals[0]
    assert "| align step" in proc.stdout
    plan = json.loads(out.read_text())
    (program,) = plan["programs"]
    assert program["fits"] is False and program["peak_bytes"] > plan["chip"]["usable_bytes"]


def test_dpo_benchmark_reports_the_plan_beside_its_measurements():
    """benchmarks/dpo_step.py --plan-target (what gpu.sh passes on a GPU): the same step compiled
    for an H100, its predicted peak memory and roofline time next to the measured step."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import dpo_step
    finally:
        sys.path.pop(0)
    result = dpo_step.main(["--model=tiny", "--steps=1", "--batch=2", "--prompt-len=8",
                            "--completion-len=8", "--plan-target=gpu:h100:1x1x1"])
    assert result["plan_target"] == "gpu:h100:1x1x1"
    assert result["plan_peak_mb"] > 0 and 0 < result["plan_roofline_step_s"] < result["step_s"]


def test_scale_presets_validate_and_the_tiny_one_fits_v5e_4():
    """configs/scale.py: every MODEL,TARGET preset validates on its target's device count; the
    tiny preset (the same settings on tiny models) compiles and fits, every program."""
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    try:
        import scale
    finally:
        sys.path.pop(0)
    from cwpo_jax.stages.config import validate
    for model in scale.STUDENTS:
        for name in scale.TARGETS:
            if (name == "v5e-4") != (model == "tiny"):
                continue
            cfg = scale.get_config(f"{model},{name}")
            cfg.output_dir, cfg.data.path, cfg.evaluate.gold_judge = "x", "x.jsonl", "none"
            validate(cfg, num_devices=targets.parse_target(scale.TARGETS[name]).num_devices)
    cfg = scale.get_config("tiny,v5e-4")
    target = targets.parse_target("v5e-4")
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor,
                              devices=targets.devices(target))
    programs = pipeline.plan_programs(cfg, mesh, log=lambda _: None)
    rows = report.rows(programs, target)
    assert len(rows) == 6 and all(r.fits for r in rows), report.table(target, rows)


def test_lora_base_in_bfloat16_halves_the_frozen_weights_of_the_align_step():
    """align.train.frozen_dtype=bfloat16 as train/fit.py holds it: the compiled step's weights
    (frozen base + adapters and their moments) shrink by about half the base."""
    held = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _tiny_config()
        cfg.align.lora_rank = 4
        cfg.align.train.frozen_dtype = dtype
        (step,) = pipeline.plan_programs(cfg, _mesh("tpu:v5e:2x2", cfg), stages=("align",),
                                         log=lambda _: None)
        assert not step.error, step.error
        held[dtype] = (step.weight_bytes, step.memory["argument"])
    assert 0.45 < held["bfloat16"][0] / held["float32"][0] < 0.6
    assert held["bfloat16"][1] < held["float32"][1]
