"""Device mesh, the one logical-axis rules table, and NamedShardings for params and batches.

Mesh axes: ("data", "fsdp", "tensor"). Batches split over data x fsdp; parameters are sharded by
their logical axis names (set by the model code) through `RULES`. `jax.jit` with explicit
in/out shardings over this mesh is the modern spelling of pjit.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
LAYER_AXIS = "layers"  # logical name of the leading axis of stacked (scanned) layers
AXES_KEY = "out_sharding"  # the nnx.Variable metadata that holds its logical axis names
BATCH_AXES = ("data", "fsdp")

# Logical parameter axis -> mesh axis. FSDP shards the embedding dimension of every matrix;
# tensor parallelism splits heads, MLP width and vocabulary. Unlisted names are replicated.
RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    (LAYER_AXIS, None),  # scanned layers' stacked axis: each device holds every layer
)


def variable_axes(variable) -> tuple:
    """An nnx.Variable's logical axis names (metadata AXES_KEY); () when it has none."""
    return tuple(variable.get_metadata().get(AXES_KEY) or ())


def maybe_initialize_distributed() -> bool:
    """Start JAX's multi-controller runtime when a launcher set it up; a no-op on one host.

    Recognised: JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (explicit, also used
    by our tests with CPU collectives); CWPO_DISTRIBUTED=auto (set by launch/tpu_pod.sh and
    launch/slurm_gpu.sbatch), which lets jax auto-detect the cluster (TPU VM pod, SLURM); and a
    multi-task SLURM step.
    """
    if jax.distributed.is_initialized():
        return True
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
        return True
    multi_task_slurm = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if os.environ.get("CWPO_DISTRIBUTED") == "auto" or multi_task_slurm:
        jax.distributed.initialize()  # cluster auto-detection (TPU metadata, SLURM variables)
        return True
    return False


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """Mesh with axes (data, fsdp, tensor). One size may be -1: it takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {sizes}")
    if any(v == 0 or v < -1 for v in sizes.values()):
        raise ValueError(f"mesh: axis sizes must be positive or -1, got {sizes}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(
                f"mesh: {len(devices)} devices do not divide by the fixed axes {sizes} "
                f"(product {fixed})"
            )
        sizes[free[0]] = len(devices) // fixed
    total = math.prod(sizes.values())
    if total > len(devices):
        raise ValueError(f"mesh: {sizes} needs {total} devices but only {len(devices)} exist")
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:  # topology-aware placement on real accelerators
        grid = mesh_utils.create_device_mesh(shape, devices[:total])
    except Exception:  # e.g. a subset of devices; a plain reshape is always valid
        grid = np.asarray(devices[:total]).reshape(shape)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=RULES
) -> P:
    """PartitionSpec for one array from its logical axis names.

    A dimension stays replicated when its mesh axis is absent, has size 1, is already used by an
    earlier dimension of the same array, or does not divide the dimension (e.g. 3 KV heads on a
    tensor axis of 2): correctness first, the rule table says what is wanted where it fits.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical axes {tuple(names)} do not match array shape {tuple(shape)}")
    table: Mapping[str, str | None] = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axis = table.get(name) if name is not None else None
        if axis is None or axis in used or mesh.shape.get(axis, 1) == 1 or dim % mesh.shape[axis]:
            spec.append(None)
            continue
        used.add(axis)
        spec.append(axis)
    return P(*spec)


def constrain_batch(x):
    """x [B, ...] pinned to the batch axes of the mesh in context (`mesh_context`): XLA then
    keeps activations split over data x fsdp and all-gathers FSDP-sharded weights, rather than
    gathering the batch (which a weight sharded on the embedding dimension can otherwise pull
    it into). A no-op outside a mesh context, on one device, or when B does not divide."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not all(a in mesh.axis_names for a in BATCH_AXES):
        return x
    size = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if size == 1 or x.shape[0] % size:
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *([None] * (x.ndim - 1))))


def mesh_context(fn, mesh: Mesh):
    """fn traced with `mesh` as the context mesh, so constrain_batch applies inside it."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return wrapped


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2, leading: int = 0) -> NamedSharding:
    """Shard the batch dimension (after `leading` unsharded dims, e.g. gradient accumulation).
    Arrays of more than `ndim` dims get their extra trailing dims unsharded as well."""
    return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES, *([None] * (ndim - leading - 1))))


def batch_divisor(mesh: Mesh) -> int:
    """Global batch sizes must be multiples of this (the data-parallel width)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


@functools.lru_cache(maxsize=16)  # shard_batch asks at every step; a mesh never changes
def process_block(mesh: Mesh) -> tuple[int, int]:
    """(i, n): this process's devices hold block i of n equal, contiguous blocks of a batch's
    rows (batch_sharding), so it supplies rows [i*B/n, (i+1)*B/n) of every global batch of B
    (data/loader's shard). (0, 1) on one process; processes whose devices hold the same rows
    (batch axes smaller than the process count) share a block."""
    if jax.process_count() == 1:
        return 0, 1
    rows = batch_divisor(mesh)
    held = batch_sharding(mesh, 1).addressable_devices_indices_map((rows,))
    mine = sorted({index[0].indices(rows)[0] for index in held.values()})
    local = len(mine)
    if mine != list(range(mine[0], mine[0] + local)) or mine[0] % local:
        raise ValueError(f"process {jax.process_index()} holds batch rows {mine} of {rows}, not "
                         "one contiguous block: order the mesh's devices by process")
    return mine[0] // local, rows // local


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, leading: int = 0):
    """This process's rows of a batch -> global jax.Arrays sharded over (data, fsdp) along
    dimension `leading`.

    Each process passes block i of n of every global batch (process_block; the whole batch on
    one process) and transfers only its own rows. A pair batch's blocks each hold their pairs'
    chosen rows then rejected rows; arrays with two rows per pair (twice pair_index's rows) are
    reordered on device into the global layout, every chosen row [:B] then every rejected row
    [B:]."""
    if jax.process_count() == 1:
        return {key: _global_array(key, np.asarray(value), mesh, leading)
                for key, value in batch.items()}
    _, blocks = process_block(mesh)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim <= leading:  # the same on every process
            out[key] = _global_array(key, value, mesh, leading)
            continue
        shape = list(value.shape)
        shape[leading] *= blocks
        _check_rows(key, shape[leading], mesh)
        out[key] = jax.make_array_from_process_local_data(
            batch_sharding(mesh, value.ndim, leading), value, tuple(shape))
    if "pair_index" in batch and blocks > 1:
        pairs = np.shape(batch["pair_index"])[leading]
        for key, value in out.items():
            if value.ndim > leading and np.shape(batch[key])[leading] == 2 * pairs:
                out[key] = _pairs_major(mesh, value.ndim, leading, blocks)(value)
    return out


def _check_rows(key: str, rows: int, mesh: Mesh) -> None:
    if rows % batch_divisor(mesh):
        raise ValueError(
            f"batch[{key!r}] has {rows} rows on the batch axis, not divisible by the "
            f"data-parallel size {batch_divisor(mesh)} (mesh data x fsdp)")


def _global_array(key: str, value: np.ndarray, mesh: Mesh, leading: int) -> jax.Array:
    """A batch array every process holds whole -> a global array; each process transfers only
    the shards its own devices hold."""
    if value.ndim <= leading:
        sh = replicated(mesh)
    else:
        _check_rows(key, value.shape[leading], mesh)
        sh = batch_sharding(mesh, value.ndim, leading)
    return jax.make_array_from_callback(value.shape, sh, lambda idx: value[idx])


@functools.lru_cache(maxsize=64)
def _pairs_major(mesh: Mesh, ndim: int, axis: int, blocks: int):
    """Rows [c_0 r_0 c_1 r_1 ...] (block k's chosen then rejected rows) -> [c_0 c_1 ... r_0
    r_1 ...] along `axis`, jitted with the batch sharding kept."""

    def reorder(x):
        shape = x.shape
        x = x.reshape(*shape[:axis], blocks, 2, shape[axis] // (2 * blocks), *shape[axis + 1:])
        return jnp.swapaxes(x, axis, axis + 1).reshape(shape)

    return jax.jit(reorder, out_shardings=batch_sharding(mesh, ndim, axis))
