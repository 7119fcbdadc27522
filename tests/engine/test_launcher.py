"""launch/multiprocess.py: N local CPU processes joined by jax.distributed; a failure or SIGTERM
reaches every child; SIGTERM to one process makes every process save the same step; a model
sharded over processes (fsdp=2) exports once and reloads equal."""
import json
import os
import signal
import stat
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from cwpo_jax.io_utils import file_mode
from cwpo_jax.models import from_pretrained
from cwpo_jax.train.checkpoint import Checkpointer
from tests.engine.export_worker import tiny_model
from tests.engine.test_loop import losses_by_step, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = [sys.executable, os.path.join(ROOT, "launch", "multiprocess.py")]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def launch(args, **kwargs):
    return subprocess.Popen(LAUNCHER + args, env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_a_failing_process_stops_the_others_and_sets_the_exit_status():
    child = ("import os, sys, time\n"
             "assert os.environ['JAX_NUM_PROCESSES'] == '2'\n"
             "if os.environ['JAX_PROCESS_ID'] == '1': sys.exit(3)\n"
             "time.sleep(120)\n")
    start = time.monotonic()
    proc = launch(["--processes=2", "--", "-c", child])
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 3, out
    assert "process 1 exited with status 3; stopping the others" in out
    assert time.monotonic() - start < 30  # the sleeping process was stopped, not waited for


def test_sigterm_is_forwarded_to_every_process(tmp_path):
    child = ("import os, signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
             f"open(os.path.join({str(tmp_path)!r}, os.environ['JAX_PROCESS_ID']), 'w').close()\n"
             "time.sleep(120)\n")
    proc = launch(["--processes=2", "--", "-c", child])
    deadline = time.monotonic() + 30
    while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 7, out


def _status(out_dir):
    return [json.loads((out_dir / f"status-{i}.json").read_text())["preempted_at"]
            for i in range(2)]


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_both_and_resume_matches(tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    worker = ["--processes=2", "--", "-m", "tests.engine.preempt_worker", str(out_dir)]
    proc = launch(worker + ["3"])  # SIGTERM to process 1 alone, while it prepares step 3
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-3000:]
    first, second = _status(out_dir)
    assert first == second and 3 <= first < 8, log[-3000:]
    assert Checkpointer(str(out_dir / "ckpt")).all_steps() == [first]
    proc = launch(worker)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and _status(out_dir) == [None, None], log[-3000:]
    # Every log line of the loop and the checkpointer from process 0 only.
    assert log.count(f"[train] resumed from {out_dir}/ckpt/{first}") == 1, log[-3000:]
    assert log.count("[test] step 8/8") == 1
    # The same losses as one uninterrupted process on a mesh of the same shape (data=2).
    run(str(tmp_path / "one"), 8, save_every=0)
    want, got = losses_by_step(str(tmp_path / "one")), losses_by_step(str(out_dir))
    assert sorted(got) == list(range(1, 9))
    for s in range(1, 9):
        assert got[s] == pytest.approx(want[s], rel=1e-5), s


@pytest.mark.slow
def test_two_process_fsdp_export_loads_in_one_process_with_equal_logits(tmp_path):
    out_dir = tmp_path / "model"
    proc = launch(["--processes=2", "--", "-m", "tests.engine.export_worker", str(out_dir),
                   "60000"])
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-3000:]
    files = sorted(n for n in os.listdir(out_dir) if n.endswith(".safetensors"))
    n = len(files)
    assert n >= 2 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    with open(out_dir / "model.safetensors.index.json") as f:
        assert sorted(set(json.load(f)["weight_map"].values())) == files
    assert all(stat.S_IMODE(os.stat(out_dir / f).st_mode) == file_mode() for f in files)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 12)), jnp.int32)
    mask = jnp.ones_like(ids)
    np.testing.assert_array_equal(np.asarray(from_pretrained(str(out_dir))(ids, mask)),
                                  np.asarray(tiny_model()(ids, mask)))
