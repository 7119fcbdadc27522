"""launch/plan.py: target names, the pipeline's programs compiled for real TPU and GPU targets
from abstract shapes, their memory report, FLOP counts against XLA's, and one-line refusals."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

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
    total = sum(np.prod(x.shape) * 4 for x in
                __import__("jax").tree.leaves(__import__("flax").nnx.state(model)))
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
