"""Every output file (scores, reference cache, results, split files, samples, done markers, pairs
files) is written to a temp file in the same folder and renamed: a crash part-way leaves the
previous file whole. An audit of the sources keeps new writers on that path."""
import ast
import errno
import glob
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from cwpo_jax import io_utils, scores
from cwpo_jax.data import PreferencePair, read_preferences, write_preferences

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Writers that do not go through io_utils.atomic_open, and why that is acceptable.
NON_ATOMIC_ALLOWED = {
    "cwpo_jax/io_utils.py": "atomic_open itself (temp file, fsync, os.replace)",
    "cwpo_jax/train/metrics.py": "metrics.jsonl is an append-only log, one flushed line a step",
    "cwpo_jax/train/loop.py": "reopens metrics.jsonl for appending after rewriting it "
                              "atomically on resume",
    "cwpo_jax/models/checkpoint_hf.py": "save_pretrained writes a model folder (config.json, "
                                        "model.safetensors); stages write their done.json after "
                                        "it, so a half-written folder is never used",
    "cwpo_jax/data/token_store.py": "merge_parts streams ids into a file of a temporary folder "
                                    "that io_utils.atomic_dir renames into place when complete",
}


def _writes(path):
    """(line, call) of every open/fdopen with a writing mode and every safetensors save_file."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
            node.func, "id", "")
        if name in ("fdopen", "save_file"):
            yield node.lineno, name
        if name == "open":
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(
                    c in mode.value for c in "wax+"):
                yield node.lineno, f"open(..., {mode.value!r})"


def test_every_writer_in_the_package_is_atomic_or_listed():
    found = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "cwpo_jax", "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, ROOT)
        calls = list(_writes(path))
        if calls:
            found[rel] = calls
    unexpected = {k: v for k, v in found.items() if k not in NON_ATOMIC_ALLOWED}
    assert not unexpected, (f"non-atomic writes {unexpected}: use cwpo_jax.io_utils.atomic_open "
                            "(or list them in NON_ATOMIC_ALLOWED with the reason)")


class Crash(OSError):
    def __init__(self):
        super().__init__(errno.ENOSPC, "No space left on device (simulated)")


@pytest.fixture
def crash_on_dumps(monkeypatch):
    """json.dumps raises on its n-th call from now (json.dump writes half its text, then
    raises): a writer dies half-way through a file."""
    def arm(n):
        real, count = json.dumps, {"n": 0}

        def dumps(*args, **kwargs):
            count["n"] += 1
            if count["n"] >= n:
                raise Crash()
            return real(*args, **kwargs)

        def dump(obj, f, **kwargs):
            text = real(obj, **kwargs)
            f.write(text[:len(text) // 2])
            raise Crash()

        monkeypatch.setattr(json, "dumps", dumps)
        monkeypatch.setattr(json, "dump", dump)
    return arm


def pairs(n, tag=""):
    return [PreferencePair(id=f"t:{tag}{i}", prompt=({"role": "user", "content": f"q{i}"},),
                           chosen=f"good {i}", rejected=f"bad {i}", source="t") for i in range(n)]


def cfg_for(tmp_path):
    return ml_collections.ConfigDict({"output_dir": str(tmp_path)})


def _write_split(tmp_path, n, tag):
    from cwpo_jax.stages import prepare

    prepare._write_split(cfg_for(tmp_path), "unlabelled", pairs(n, tag))
    return str(tmp_path / "data" / "unlabelled.jsonl")


def _write_samples(tmp_path, n, tag):
    from cwpo_jax.stages import evaluate

    prompts = [({"role": "user", "content": f"q{i}"},) for i in range(n)]
    evaluate._write_samples(cfg_for(tmp_path), "weak", prompts, [f"{tag}{i}" for i in range(n)],
                            np.arange(n, dtype=float), 1, {"length": np.ones(n)},
                            np.zeros(n, bool))
    return str(tmp_path / "eval" / "samples_weak.jsonl")


def _write_scores(tmp_path, n, tag):
    path = str(tmp_path / "score" / "scores.jsonl")
    scores.write_scores(path, [f"{tag}{i}" for i in range(n)], np.arange(n, dtype=float),
                        np.zeros(n), annotator={"sha256": tag})
    return path


def _write_done(tmp_path, n, tag):
    path = str(tmp_path / "annotator" / "done.json")
    io_utils.write_json(path, {"tag": tag, "rows": [{"i": i} for i in range(n)]})
    return path


def _write_pairs(tmp_path, n, tag):
    path = str(tmp_path / "pool.jsonl")
    write_preferences(pairs(n, tag), path)
    return path


def _write_pairs_gz(tmp_path, n, tag):
    path = str(tmp_path / "pool.jsonl.gz")
    write_preferences(pairs(n, tag), path)
    return path


WRITERS = {"split file (prepare)": _write_split, "eval samples (evaluate)": _write_samples,
           "scores file": _write_scores, "done marker / results.json (write_json)": _write_done,
           "pairs file": _write_pairs, "pairs file, gzip": _write_pairs_gz}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_crash_mid_write_leaves_the_previous_file_whole(tmp_path, crash_on_dumps, writer):
    write = WRITERS[writer]
    path = write(tmp_path, 5, "old")
    before = Path(path).read_bytes()
    crash_on_dumps(3)  # the third JSON row of the new file fails
    with pytest.raises(Crash):
        write(tmp_path, 50, "new")
    assert Path(path).read_bytes() == before
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # temp file removed
    if "pairs" in writer:
        assert [p.id for p in read_preferences(path, format="pairs")] == [
            f"t:old{i}" for i in range(5)]


def test_pairs_gzip_file_is_complete_and_reproducible(tmp_path):
    a, b = str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl.gz")
    write_preferences(pairs(20), a)
    write_preferences(pairs(20), b)
    assert Path(a).read_bytes() == Path(b).read_bytes()  # mtime 0: same bytes for same pairs
    with gzip.open(a, "rt") as f:
        assert len(f.read().splitlines()) == 20


def test_reference_cache_write_is_atomic(tmp_path, monkeypatch):
    """align writes refcache/<key>.npz through atomic_open(path, 'wb') + np.savez."""
    path = str(tmp_path / "refcache" / "k.npz")
    with io_utils.atomic_open(path, "wb") as f:
        np.savez(f, ids=np.asarray(["a"]), chosen=np.zeros(1), rejected=np.zeros(1))
    before = Path(path).read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK partial")
        raise Crash()

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(Crash), io_utils.atomic_open(path, "wb") as f:
        np.savez(f, ids=np.asarray(["b"]), chosen=np.ones(1), rejected=np.ones(1))
    assert Path(path).read_bytes() == before and os.listdir(tmp_path / "refcache") == ["k.npz"]


def test_sigkill_mid_write_leaves_old_file_and_only_a_temp_file(tmp_path):
    """A process killed while writing: the target keeps its old content; the only residue is
    the .tmp-* file next to it (never read by anything; safe to delete)."""
    path = str(tmp_path / "results.json")
    io_utils.write_json(path, {"old": True})
    code = ("import os, signal, sys\n"
            "from cwpo_jax.io_utils import atomic_open\n"
            f"with atomic_open({path!r}) as f:\n"
            "    f.write('{\"new\": ' + '1' * 100000)\n"
            "    f.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT), check=False)
    assert r.returncode == -signal.SIGKILL
    assert io_utils.read_json(path) == {"old": True}
    leftovers = sorted(set(os.listdir(tmp_path)) - {"results.json"})
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")
