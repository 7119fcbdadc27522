"""Two local processes with jax.distributed (CPU, gloo) train to the same numbers as one."""
import json
import os
import subprocess
import sys

import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _read(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    with open(os.path.join(out_dir, "result.json")) as f:
        return losses, json.load(f)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir(), multi.mkdir()
    worker = [sys.executable, "-m", "tests.engine.multiprocess_worker"]
    subprocess.run(worker + [str(single)], env=_env(), cwd=ROOT, check=True, timeout=300)
    port = str(portpicker.pick_unused_port())
    procs = [subprocess.Popen(worker + [str(multi), str(i), "2", port], env=_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    want_losses, want = _read(single)
    got_losses, got = _read(multi)
    assert got["processes"] == 2 and want["processes"] == 1
    assert len(got_losses) == 3
    for a, b in zip(got_losses, want_losses):
        assert a == pytest.approx(b, rel=1e-5)
    assert got["checksum"] == pytest.approx(want["checksum"], rel=1e-5)
