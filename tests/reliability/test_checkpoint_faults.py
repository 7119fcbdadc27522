"""Corrupted, truncated and bit-flipped checkpoints; a full disk and a read-only folder at save
time: a clear error or a fallback to the newest readable checkpoint, nothing earlier destroyed."""
import contextlib
import errno
import glob
import os
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwpo_jax import io_utils, scores
from cwpo_jax.train.checkpoint import Checkpointer, CheckpointError
from tests.engine.test_loop import losses_by_step, run


def state_at(step: int):
    return {"w": jnp.arange(512, dtype=jnp.float32) * step, "b": jnp.full((3,), step, jnp.int32),
            "key": jax.random.key(step)}


def template():
    return state_at(0)


def saved(directory, steps=(1, 2, 3), keep=5):
    ckpt = Checkpointer(str(directory), keep=keep)
    for s in steps:
        ckpt.save(s, state_at(s), {"data": {"position": s}})
    ckpt.close()
    return str(directory)


def biggest_array_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
             if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def flip_bit(path):
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x10
    Path(path).write_bytes(bytes(data))


def garble(path):
    Path(path).write_bytes(np.random.default_rng(0).bytes(os.path.getsize(path)))


def edit_text(path, old, new):
    text = Path(path).read_text()
    assert old in text
    Path(path).write_text(text.replace(old, new))


CORRUPTIONS = {
    "array data truncated": lambda d: truncate(biggest_array_file(d)),
    "array data bit flip": lambda d: flip_bit(biggest_array_file(d)),
    "array data deleted": lambda d: os.remove(biggest_array_file(d)),
    "array metadata garbled": lambda d: garble(os.path.join(d, "state", "_METADATA")),
    "array manifest truncated": lambda d: truncate(os.path.join(d, "state", "manifest.ocdbt")),
    "extras (data position) edited": lambda d: edit_text(
        os.path.join(d, "extra", "metadata"), '"position": 3', '"position": 4'),
    "extras garbled": lambda d: garble(os.path.join(d, "extra", "metadata")),
    "step folder emptied": lambda d: [shutil.rmtree(os.path.join(d, n)) for n in ("state", "extra")],
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_latest_falls_back_to_previous(tmp_path, capfd, kind):
    d = saved(tmp_path / "ckpt")
    CORRUPTIONS[kind](os.path.join(d, "3"))
    ckpt = Checkpointer(d, keep=5)
    state, extra, step = ckpt.restore(template())
    assert step == 2 and extra == {"data": {"position": 2}}
    np.testing.assert_array_equal(state["w"], state_at(2)["w"])
    assert jax.random.key_data(state["key"]).tolist() == jax.random.key_data(
        jax.random.key(2)).tolist()
    err = capfd.readouterr().err
    assert f"checkpoint {d}/3 is" in err and "trying the previous checkpoint" in err
    assert "resumed from step 2" in err
    # the unreadable step is kept for inspection, out of the way of the next save of step 3
    assert len(glob.glob(os.path.join(d, "corrupt-3-*"))) == 1
    assert ckpt.all_steps() == [1, 2]
    ckpt.save(3, state_at(3), {"data": {"position": 3}})
    assert ckpt.restore(template())[2] == 3


def test_explicit_step_that_is_corrupt_is_refused(tmp_path):
    d = saved(tmp_path / "ckpt")
    flip_bit(biggest_array_file(os.path.join(d, "2")))
    with pytest.raises(CheckpointError, match=r"checkpoint .*/2 is corrupt: 1 array\(s\) do not "
                                              r"match their fingerprint \(e.g. \[\"\['w'\]\"\]\)"):
        Checkpointer(d).restore(template(), step=2)


def test_every_checkpoint_corrupt_is_an_error_and_nothing_is_moved(tmp_path):
    d = saved(tmp_path / "ckpt", steps=(1, 2))
    for s in (1, 2):
        truncate(biggest_array_file(os.path.join(d, str(s))))
    with pytest.raises(CheckpointError, match="no readable checkpoint in .*ckpt/2 is unreadable.*"
                                              "ckpt/1 is unreadable"):
        Checkpointer(d).restore(template())
    assert sorted(os.listdir(d)) == ["1", "2"]


def test_a_different_model_is_not_mistaken_for_corruption(tmp_path):
    d = saved(tmp_path / "ckpt", steps=(1, 2))
    other = dict(template(), w=jnp.zeros((256,)))
    with pytest.raises(ValueError, match=r"ckpt/2: \['w'\] has shape \(512,\), expected \(256,\)"):
        Checkpointer(d).restore(other)
    with pytest.raises(ValueError, match="lacks"):
        Checkpointer(d).restore(dict(template(), extra_param=jnp.zeros(2)))
    assert sorted(os.listdir(d)) == ["1", "2"]  # nothing moved aside


def tamper(directory, step) -> str:
    """Silent corruption: rewrite checkpoint `step` with one bit of one parameter flipped and
    everything else (the stored fingerprints included) as it was, the way a bad disk or copy
    would return different bits without any read error."""
    import orbax.checkpoint as ocp

    handlers = {"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}
    mgr = ocp.CheckpointManager(directory, item_handlers=handlers)
    r = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                  extra=ocp.args.JsonRestore()))
    flat = {k: np.asarray(v) for k, v in r.state.items()}
    key = next(k for k in sorted(flat) if k.startswith(".params") and flat[k].dtype == np.float32)
    flat[key] = flat[key].copy()
    flat[key].reshape(-1).view(np.uint32)[0] ^= 1  # lowest mantissa bit
    mgr.close()
    shutil.rmtree(os.path.join(directory, str(step)))
    mgr = ocp.CheckpointManager(directory, item_handlers=handlers)
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(flat),
                                           extra=ocp.args.JsonSave(dict(r.extra))), force=True)
    mgr.wait_until_finished()
    mgr.close()
    return key


def test_training_resumes_exactly_after_a_bit_flip_in_the_latest_checkpoint(tmp_path, capfd):
    """The real loop: a silently corrupted newest checkpoint is caught by its fingerprint and
    training resumes from the one before with the losses of an uninterrupted run."""
    ref, d = str(tmp_path / "ref"), str(tmp_path / "run")
    run(ref, 8)
    run(d, 6, save_every=2)  # keep=2: checkpoints 4 and 6
    flipped = tamper(os.path.join(d, "ckpt"), 6)
    capfd.readouterr()
    run(d, 8, save_every=2)
    err = capfd.readouterr().err
    assert f"ckpt/6 is corrupt: 1 array(s) do not match their fingerprint (e.g. {[flipped]}" in err
    assert f"resumed from {d}/ckpt/4" in err
    want, got = losses_by_step(ref), losses_by_step(d)
    for s in range(1, 9):
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7), s


# ------------------------------------------------------------------- full disk, read-only folder
def _fail_commit(error):
    from orbax.checkpoint._src.path import atomicity

    async def finalize(self, *args, **kwargs):
        raise error

    return atomicity.AtomicRenameTemporaryPath, "finalize", finalize


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   OSError(errno.EROFS, "Read-only file system")])
def test_failed_save_is_a_clear_error_and_keeps_earlier(tmp_path, monkeypatch, error):
    """Portable variant (no mount needed): the commit of a save raises ENOSPC / EROFS."""
    d = saved(tmp_path / "ckpt", steps=(1, 2), keep=2)
    ckpt = Checkpointer(d, keep=2)
    monkeypatch.setattr(*_fail_commit(error))
    with pytest.raises(CheckpointError, match=rf"saving checkpoint step 3 to {d} failed: "
                                              rf"{error.strerror} .*untouched: \[1, 2\]"):
        ckpt.save(3, state_at(3), {"data": {"position": 3}})
    monkeypatch.undo()
    fresh = Checkpointer(d, keep=2)
    assert fresh.all_steps() == [1, 2]  # max_to_keep did not drop step 1 for a failed save
    assert fresh.restore(template())[2] == 2


@contextlib.contextmanager
def tmpfs(path, size):
    """A real small filesystem (needs root and mount rights; skipped elsewhere)."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount_read_only(path):
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def test_disk_full_at_checkpoint_save(tmp_path):
    with tmpfs(tmp_path / "fs", "400k") as fs:
        d = os.path.join(fs, "ckpt")
        ckpt = Checkpointer(d, keep=1)
        ckpt.save(1, state_at(1), {"data": {"position": 1}})
        big = dict(state_at(2), w=jnp.asarray(np.random.default_rng(0).normal(size=200_000),
                                              jnp.float32))
        with pytest.raises(CheckpointError, match=r"step 2 .* failed: No space left on device"
                                                  r".*untouched: \[1\]"):
            ckpt.save(2, big, {"data": {"position": 2}})
        fresh = Checkpointer(d, keep=1)  # also removes the partial 2.orbax-checkpoint-tmp
        state, extra, step = fresh.restore(template())
        assert step == 1 and extra == {"data": {"position": 1}}
        np.testing.assert_array_equal(state["w"], state_at(1)["w"])


def test_disk_full_and_read_only_for_atomic_files(tmp_path):
    with tmpfs(tmp_path / "fs", "64k") as fs:
        done = os.path.join(fs, "done.json")
        io_utils.write_json(done, {"ok": 1})
        with pytest.raises(OSError) as e:
            io_utils.write_json(done, {"big": "x" * 200_000})
        assert e.value.errno == errno.ENOSPC
        assert io_utils.read_json(done) == {"ok": 1}  # the old file, whole
        path = os.path.join(fs, "scores.jsonl")
        scores.write_scores(path, ["a", "b"], [1.0, 0.0], [0.0, 1.0], annotator={"sha": "x"})
        ids = [f"id-{i}" for i in range(5000)]
        with pytest.raises(OSError):
            scores.write_scores(path, ids, np.zeros(5000), np.ones(5000), annotator={"sha": "x"})
        assert scores.read_scores(path)["ids"] == ["a", "b"]
        assert sorted(os.listdir(fs)) == ["done.json", "scores.jsonl"]  # no temp files left

        remount_read_only(fs)
        with pytest.raises(OSError) as e:
            io_utils.write_json(done, {"ok": 2})
        assert e.value.errno == errno.EROFS
        assert io_utils.read_json(done) == {"ok": 1}


def test_read_only_folder_at_checkpoint_save(tmp_path):
    with tmpfs(tmp_path / "fs", "4m") as fs:
        d = os.path.join(fs, "ckpt")
        ckpt = Checkpointer(d, keep=3)
        ckpt.save(1, state_at(1), {"data": {"position": 1}})
        remount_read_only(fs)
        with pytest.raises(CheckpointError, match=r"step 2 .* failed: Read-only file system"):
            ckpt.save(2, state_at(2), {"data": {"position": 2}})
        # a read-only copy of a run still restores
        _, extra, step = Checkpointer(d, keep=3).restore(template())
        assert step == 1 and extra == {"data": {"position": 1}}


def test_training_process_with_read_only_checkpoints_exits_promptly(tmp_path):
    """The real loop in its own process: checkpoints 2 and 4 written, the folder becomes
    read-only, the rerun resumes from 4 and fails at the save of step 6 with a one-line error
    and exit code 4, within seconds (Orbax's waiting threads are released), 4 intact."""
    from tests.reliability.test_kill_and_resume import job

    with tmpfs(tmp_path / "fs", "8m") as fs:
        ckpt = os.path.join(fs, "ckpt")
        r = job(tmp_path / "run", "--ckpt-dir", ckpt, steps=4)
        assert r.returncode == 0, r.stderr[-3000:]
        remount_read_only(fs)
        r = job(tmp_path / "run", "--ckpt-dir", ckpt, steps=8, timeout=120)
        assert r.returncode == 4, r.stderr[-3000:]
        assert f"resumed from {ckpt}/4" in r.stderr
        line = next(x for x in r.stderr.splitlines() if x.startswith("saving checkpoint"))
        assert line.startswith(f"saving checkpoint step 6 to {ckpt} failed: Read-only file "
                               "system") and line.endswith("untouched: [2, 4]")
        assert sorted(os.listdir(ckpt)) == ["2", "4"]
