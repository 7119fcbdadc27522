"""SIGKILL (not SIGTERM) of a real training process, during a step and during a checkpoint write;
the rerun resumes from the last committed checkpoint and its per-step losses equal an
uninterrupted run's. The job is tests/reliability/train_job.py (toy model, real loop/Orbax)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from cwpo_jax.train.checkpoint import TMP_MARK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla-cache"))


def job(workdir, *args, cache=None, steps=8, timeout=300):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if cache:  # same programs in every run: compile once
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run([sys.executable, "-m", "tests.reliability.train_job", str(workdir),
                           "--steps", str(steps), "--save-every", "2", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def losses(workdir) -> dict[int, float]:
    """Loss per step. On resume the loop drops the records of steps after the restored
    checkpoint, so every step appears once."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return {r["step"]: r["loss"] for r in records}


def committed_steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "ckpt")) if n.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, xla_cache):
    d = tmp_path_factory.mktemp("uninterrupted")
    r = job(d, cache=xla_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    got = losses(d)
    assert sorted(got) == list(range(1, 9))
    return got


def test_sigkill_during_training_resumes_with_identical_losses(reference, tmp_path, xla_cache):
    r = job(tmp_path, "--kill", "after_step:5", cache=xla_cache)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert committed_steps(tmp_path) == [2, 4]
    assert max(losses(tmp_path)) == 5  # step 5 ran and was logged, but never checkpointed
    r = job(tmp_path, cache=xla_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {tmp_path}/ckpt/4" in r.stderr
    got = losses(tmp_path)
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        assert got[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step
    assert committed_steps(tmp_path)[-1] == 8


@pytest.mark.parametrize("where", ["before_commit", "mid_write"])
def test_sigkill_during_checkpoint_write_keeps_previous(reference, tmp_path, xla_cache, where):
    r = job(tmp_path, "--kill", f"{where}:4", cache=xla_cache)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    names = os.listdir(tmp_path / "ckpt")
    assert committed_steps(tmp_path) == [2]  # the interrupted save never became step 4
    assert [n for n in names if TMP_MARK in n] == [f"4{TMP_MARK}"]
    if where == "mid_write":  # the array item itself was still uncommitted
        assert any(TMP_MARK in n for n in os.listdir(tmp_path / "ckpt" / f"4{TMP_MARK}"))

    r = job(tmp_path, cache=xla_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"ignoring 1 unfinished save(s) in {tmp_path}/ckpt" in r.stderr
    assert f"4{TMP_MARK}" in r.stderr
    assert f"resumed from {tmp_path}/ckpt/2" in r.stderr
    got = losses(tmp_path)
    for step in range(1, 9):
        assert got[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step
    assert not [n for n in os.listdir(tmp_path / "ckpt") if TMP_MARK in n]
    assert committed_steps(tmp_path)[-1] == 8


def test_nan_in_a_subprocess_exits_with_step_and_keeps_checkpoint(tmp_path, xla_cache):
    r = job(tmp_path, "--nan-at", "5", cache=xla_cache)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "step 5:" in r.stderr and f"Last good checkpoint: {tmp_path}/ckpt/4" in r.stderr
    assert committed_steps(tmp_path) == [2, 4]
    assert max(losses(tmp_path)) == 4


def test_resume_rewrites_metrics_to_one_record_per_step(tmp_path):
    """A run killed after logging steps its last checkpoint does not hold, with a torn last line
    (killed mid-write): on resume those records go, and every step ends up logged once."""
    import shutil

    from tests.engine.test_loop import run

    d = str(tmp_path)
    run(d, 5, save_every=2)  # checkpoints 4 and 5 (keep=2), steps 1..5 logged
    shutil.rmtree(os.path.join(d, "ckpt", "5"))  # as if killed before step 5's checkpoint
    with open(os.path.join(d, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "loss": 0.1')  # torn
    run(d, 8, save_every=2)
    got = losses(d)
    assert sorted(got) == list(range(1, 9))
