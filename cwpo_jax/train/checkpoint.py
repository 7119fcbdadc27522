"""Orbax checkpoints of the train state plus JSON extras (data iterator position, RNG, config).

The state is saved as a flat {key path: array} dict, so any pytree (NNX States, optax states)
round-trips without Orbax needing to know its node types; restore goes straight into the target
shardings. Typed PRNG keys are stored as their raw key data.

Faults (RELIABILITY.md):
- A save that dies part-way (SIGKILL, full disk) leaves only `<step>.orbax-checkpoint-tmp`, which
  is never read as a checkpoint; it is reported and cleaned up on the next start. A failed save
  raises CheckpointError naming the step; earlier checkpoints are not touched.
- Every save stores a fingerprint of each array's bits (a position-weighted uint32 sum, computed
  on device) and a sha256 of the extras; restore recomputes both, so a corrupted, truncated or
  bit-flipped checkpoint is refused instead of silently loaded.
- Restoring the latest checkpoint falls back to the newest readable one with a message; the
  unreadable newer ones are moved aside to `corrupt-<step>-<time>` (not deleted).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cwpo_jax.io_utils import hash_json

TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the folder and step."""


def _flat(tree) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(x):
    return jax.random.key_data(x) if _is_key(x) else x


def _abstract(x):
    x = _to_storable(x)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))


def _bits(x):
    """The array's bits as uint32 words (any single flipped bit changes the fingerprint)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


@jax.jit
def _fingerprints(flat: dict) -> dict:
    out = {}
    for key, x in flat.items():
        words = _bits(x)
        # Odd multipliers: a flip of bit k of word i changes the sum by 2^k * m_i != 0 mod 2^32.
        weights = jax.lax.iota(jnp.uint32, words.size) * jnp.uint32(2654435761) | jnp.uint32(1)
        out[key] = jnp.sum(words * weights, dtype=jnp.uint32)
    return out


def fingerprints(flat: dict) -> dict[str, int]:
    return {k: int(v) for k, v in _fingerprints(flat).items()}


def _os_reason(e: BaseException) -> str | None:
    """'No space left on device', 'Read-only file system', ... if an OS error is behind `e`
    (also when TensorStore reports it inside a ValueError as os_error_code)."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    code = re.search(r"os_error_code='?(\d+)", str(e))
    return os.strerror(int(code.group(1))) if code else None


def _short(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def _release_orbax_waiters() -> int:
    """After a save that failed early (e.g. a read-only folder), Orbax 0.12 leaves non-daemon
    background threads waiting up to its async timeout (minutes) for signals the failed save
    never sends, and the process cannot exit until they give up. Cancel them and send the
    signals they wait for. Returns how many were released."""
    import threading

    try:
        from orbax.checkpoint._src.futures import future, signaling_client
    except ImportError:  # another Orbax layout: nothing to release
        return 0
    released = 0
    for thread in threading.enumerate():
        if type(thread).__name__ != "_SignalingThread" or not thread.is_alive():
            continue
        try:
            thread._cancelled = True
            client = signaling_client.get_signaling_client()
            for sig in thread._receive_signals:
                key = future.AwaitableSignalsContract.get_unique_awaitable_singal_key(
                    sig, thread._operation_id)
                client.key_value_set(key, "released after a failed save", allow_overwrite=True)
            released += 1
        except Exception:  # noqa: BLE001, S112  (private API changed: leave it to its timeout)
            continue
    return released


class Checkpointer:
    """Keeps the newest `keep` checkpoints under `directory`, one sub-folder per step."""

    def __init__(self, directory: str, *, keep: int = 3):
        self.directory = os.path.abspath(directory)
        partial = self.partial_saves()
        if partial and jax.process_index() == 0:
            print(f"[checkpoint] ignoring {len(partial)} unfinished save(s) in {self.directory} "
                  f"(interrupted while writing; removed): {', '.join(partial)}", file=sys.stderr)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "extra": ocp.JsonCheckpointHandler()})

    def partial_saves(self) -> list[str]:
        """Temporary folders of saves that never committed (the process died while writing)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(n for n in os.listdir(self.directory) if TMP_MARK in n)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, extra: dict | None = None) -> None:
        flat = {k: _to_storable(v) for k, v in _flat(state).items()}
        extra = dict(extra or {})
        wrapped = {"payload": extra, "sha256": hash_json(extra), "arrays": fingerprints(flat)}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(flat), extra=ocp.args.JsonSave(wrapped))
        try:
            self.manager.save(step, args=args, force=True)
            self.manager.wait_until_finished()
        except Exception as e:
            _release_orbax_waiters()
            self.manager.reload()  # its in-memory step list is stale after a failed save
            kept = self.all_steps()
            reason = _os_reason(e)
            raise CheckpointError(
                f"saving checkpoint step {step} to {self.directory} failed: "
                f"{reason + ' (' + _short(e, 200) + ')' if reason else _short(e)}; "
                f"earlier checkpoints are untouched: {kept or 'none'}") from e

    def restore(self, template, step: int | None = None):
        """Restore into the structure, dtypes and shardings of `template` (e.g. a fresh state).

        With step=None, the newest readable checkpoint: unreadable newer ones are reported and
        moved aside. Returns (state, extra, step)."""
        if step is not None:
            return self._restore(template, step)
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        failures = []
        for s in steps:
            try:
                out = self._restore(template, s)
            except CheckpointError as e:
                failures.append((s, str(e)))
                if jax.process_index() == 0:
                    print(f"[checkpoint] {e}; trying the previous checkpoint", file=sys.stderr)
                continue
            if failures:
                self._move_aside([f[0] for f in failures])
                if jax.process_index() == 0:
                    print(f"[checkpoint] resumed from step {s}, the newest readable checkpoint; "
                          f"unreadable newer step(s) {[f[0] for f in failures]} moved to "
                          f"{self.directory}/corrupt-*", file=sys.stderr)
            return out
        raise CheckpointError(f"no readable checkpoint in {self.directory}: " + "; ".join(
            msg for _, msg in failures))

    def _move_aside(self, bad_steps: list[int]) -> None:
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for s in bad_steps:
                src = os.path.join(self.directory, str(s))
                if os.path.exists(src):
                    shutil.move(src, os.path.join(self.directory, f"corrupt-{s}-{stamp}"))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("cwpo_checkpoint_move_aside")
        self.manager.reload()

    def _restore(self, template, step: int):
        where = f"{self.directory}/{step}"
        template_flat = _flat(template)
        abstract = {k: _abstract(v) for k, v in template_flat.items()}
        try:
            stored = self.manager.item_metadata(step)["state"]
        except Exception as e:
            raise CheckpointError(f"checkpoint {where} is unreadable ({_short(e)})") from e
        if stored is not None:  # a different model or optimizer: not corruption, no fallback
            missing = sorted(set(template_flat) - set(stored))
            if missing:
                raise ValueError(f"checkpoint {where} lacks {missing[:5]}; it was written for a "
                                 "different model, optimizer or layer layout (train.scan_layers)")
            for key, like in abstract.items():
                shape = getattr(stored[key], "shape", None)
                if shape is not None and tuple(shape) != tuple(like.shape):
                    raise ValueError(f"checkpoint {where}: {key} has shape {tuple(shape)}, "
                                     f"expected {tuple(like.shape)}")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
            flat, wrapped = restored.state, dict(restored.extra)
        except Exception as e:
            raise CheckpointError(f"checkpoint {where} is unreadable ({_short(e)})") from e
        missing = set(template_flat) - set(flat)
        if missing:
            raise ValueError(f"checkpoint {where} lacks {sorted(missing)[:5]}")
        if "sha256" in wrapped:  # written with integrity data (all checkpoints of this version)
            extra = wrapped.get("payload")
            if hash_json(extra) != wrapped["sha256"]:
                raise CheckpointError(f"checkpoint {where} is corrupt: its JSON extras do not "
                                      "match their checksum")
            got = fingerprints({k: flat[k] for k in template_flat})
            bad = sorted(k for k, v in wrapped.get("arrays", {}).items() if got.get(k) != v)
            if bad:
                raise CheckpointError(f"checkpoint {where} is corrupt: {len(bad)} array(s) do "
                                      f"not match their fingerprint (e.g. {bad[:3]})")
        else:
            extra = wrapped
        leaves = []
        for key, like in template_flat.items():
            value = flat[key]
            if np.shape(value) != np.shape(_to_storable(like)):
                raise ValueError(f"checkpoint {where}: {key} has shape "
                                 f"{np.shape(value)}, expected {np.shape(_to_storable(like))}")
            if _is_key(like):
                value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(like))
            leaves.append(value)
        treedef = jax.tree.structure(template)
        return jax.tree.unflatten(treedef, leaves), dict(extra), step

    def close(self) -> None:
        self.manager.close()
