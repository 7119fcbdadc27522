"""Orbax checkpoints of the train state plus JSON extras (data iterator position, RNG, config).

The state is saved as a flat {key path: array} dict, so any pytree (NNX States, optax states)
round-trips without Orbax needing to know its node types; restore goes straight into the target
shardings. Typed PRNG keys are stored as their raw key data.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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


class Checkpointer:
    """Keeps the newest `keep` checkpoints under `directory`, one sub-folder per step."""

    def __init__(self, directory: str, *, keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, extra: dict | None = None) -> None:
        flat = {k: _to_storable(v) for k, v in _flat(state).items()}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(flat), extra=ocp.args.JsonSave(extra or {}))
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, template, step: int | None = None):
        """Restore into the structure, dtypes and shardings of `template` (e.g. a fresh state).

        Returns (state, extra, step)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        template_flat = _flat(template)
        abstract = {k: _abstract(v) for k, v in template_flat.items()}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
        flat = restored.state
        missing = set(template_flat) - set(flat)
        if missing:
            raise ValueError(f"checkpoint {self.directory}/{step} lacks {sorted(missing)[:5]}")
        leaves = []
        for key, like in template_flat.items():
            value = flat[key]
            if np.shape(value) != np.shape(like):
                raise ValueError(f"checkpoint {self.directory}/{step}: {key} has shape "
                                 f"{np.shape(value)}, expected {np.shape(like)}")
            if _is_key(like):
                value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(like))
            leaves.append(value)
        treedef = jax.tree.structure(template)
        return jax.tree.unflatten(treedef, leaves), dict(restored.extra), step

    def close(self) -> None:
        self.manager.close()
