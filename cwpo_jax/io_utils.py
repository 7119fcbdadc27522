"""Atomic file writes and content hashes (for caches, scores files and stage outputs)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode open() gives a new file: 0666 less the umask."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8"):
    """Write to a temp file in the same folder, fsync, then rename over `path`: readers see the
    old file or the whole new one, never a partial write. The file gets the mode a plain open()
    would give it (0666 less the umask), not mkstemp's private 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str):
    """Yields a temp folder beside `path` to fill, then renames it over `path` (removing what
    was there): readers see the old folder or the whole new one. On an error the temp folder
    goes. Its name starts with "." + basename(path) + ".tmp-" (stale_temp_dirs finds it); it
    gets the mode mkdir would give it (0777 less the umask), not mkdtemp's private 0700."""
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stale_temp_dirs(path: str) -> list[str]:
    """Temp folders atomic_dir(path) left behind (a killed writer)."""
    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return []
    return [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(f".{name}.tmp-")]


def write_json(path: str, obj, *, sort_keys: bool = True) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys)
        f.write("\n")


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def hash_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()


def hash_json(obj) -> str:
    return hash_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def hash_path(path: str) -> str:
    """sha256 over a file, or over every file of a folder (relative names and contents)."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        files = [(os.path.basename(path), path)]
    else:
        files = sorted(
            (os.path.relpath(os.path.join(root, name), path), os.path.join(root, name))
            for root, _, names in os.walk(path) for name in names)
    for rel, full in files:
        h.update(rel.encode() + b"\0")
        with open(full, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
