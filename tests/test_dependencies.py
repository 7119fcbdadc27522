"""pyproject's `full` extra lists every third-party package the code imports, each pinned in
requirements.txt; results files and atomically written folders get the umask's mode."""
import ast
import glob
import importlib.metadata
import os
import re
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from cwpo_jax.io_utils import atomic_dir, atomic_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_PARTY = {"cwpo_jax", "_cli"}  # launch/_cli.py is imported as a sibling module
# In `full` although no module imports them: used through another package.
INDIRECT = {"jinja2": "transformers renders chat templates with it",
            "array-record": "the TFDS builder's on-disk format"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_levels() -> set[str]:
    """Top-level names of every absolute import in cwpo_jax/ and launch/, anywhere in a file."""
    names = set()
    files = glob.glob(os.path.join(ROOT, "cwpo_jax", "**", "*.py"), recursive=True)
    for path in files + glob.glob(os.path.join(ROOT, "launch", "*.py")):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - FIRST_PARTY


def test_full_extra_is_every_imported_distribution_and_each_is_pinned():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    full = {_norm(n) for n in project["optional-dependencies"]["full"]}
    core = {_norm(re.split(r"[\[<>=~!; ]", d)[0]) for d in project["dependencies"]}
    to_dist = importlib.metadata.packages_distributions()
    needed = {}
    for name in imported_top_levels():
        assert name in to_dist, f"import {name!r}: no installed distribution provides it"
        dists = {_norm(d) for d in to_dist[name]}
        needed[name] = dists
    missing = {n: d for n, d in needed.items() if not d & (full | core)}
    assert not missing, f"imported but not in the `full` extra: {missing}"
    provided = set().union(*needed.values())
    unused = full - provided - set(INDIRECT)
    assert not unused, f"in the `full` extra but never imported: {unused} (or list in INDIRECT)"
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        pinned = {_norm(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==",
                                                          f.read(), re.M)}
    assert not (full | core) - pinned, f"not pinned in requirements.txt: {(full | core) - pinned}"


def test_atomic_open_gives_the_umask_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        with atomic_open(str(tmp_path / "results.json")) as f:
            f.write("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "results.json").st_mode) == 0o640


def test_atomic_dir_gives_the_umask_mode_and_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "store"
    previous = os.umask(0o027)
    try:
        with atomic_dir(str(target)) as tmp:
            (Path(tmp) / "a.npy").write_bytes(b"old")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750  # mkdtemp alone gives 0700
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(str(target)) as tmp:
            (Path(tmp) / "a.npy").write_bytes(b"new, half")
            raise RuntimeError("killed mid-write")
    assert sorted(os.listdir(tmp_path)) == ["store"]  # no temporary folder left
    assert (target / "a.npy").read_bytes() == b"old"
    with atomic_dir(str(target)) as tmp:
        (Path(tmp) / "b.npy").write_bytes(b"new")
    assert sorted(os.listdir(target)) == ["b.npy"]  # the old folder is gone, not merged
