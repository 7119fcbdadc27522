"""Accelerator targets for ahead-of-time compilation: names -> compile-only devices + chip specs.

`tpu:v5e:2x4`, `tpu:v5p:2x2x2`, `tpu:v6e-16` (Cloud TPU's names: v5e/v6e-N count chips, v4/v5p-N
count TensorCores, two per chip), `gpu:h100:1x1x8` (slices x hosts x GPUs per host). The devices
come from `jax.experimental.topologies`: libtpu's compile-only TPU devices, and the CUDA plugin's
deviceless GPU devices described by a GpuTargetConfigProto built here from the chip table. No
accelerator, driver or network is needed; nothing is allocated on them.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's public figures: memory, dense bf16 matmul peak and memory bandwidth."""

    name: str
    platform: str  # "tpu" | "gpu"
    memory_bytes: int
    peak_bf16_flops: float  # dense, no sparsity
    memory_bandwidth: float  # bytes/s
    source: str
    # GPU only: what XLA's GPU compiler needs to know about the card (GpuTargetConfigProto).
    sm_count: int = 0
    compute_capability: tuple[int, int] = (0, 0)
    clock_ghz: float = 0.0
    l2_bytes: int = 0
    description: str = ""


CHIPS = {
    "v4": Chip("v4", "tpu", 32 * GIB, 275e12, 1228e9, "Cloud TPU docs, TPU v4"),
    "v5e": Chip("v5e", "tpu", 16 * GIB, 197e12, 819e9, "Cloud TPU docs, TPU v5e"),
    "v5p": Chip("v5p", "tpu", 95 * GIB, 459e12, 2765e9, "Cloud TPU docs, TPU v5p"),
    "v6e": Chip("v6e", "tpu", 32 * GIB, 918e12, 1640e9, "Cloud TPU docs, TPU v6e"),
    "a100": Chip("a100", "gpu", 80 * GIB, 312e12, 2039e9, "NVIDIA A100 datasheet (SXM 80GB)",
                 sm_count=108, compute_capability=(8, 0), clock_ghz=1.41, l2_bytes=40 * 2**20,
                 description="NVIDIA A100-SXM4-80GB"),
    "h100": Chip("h100", "gpu", 84942979072, 989e12, 3352e9, "NVIDIA H100 datasheet (SXM5 80GB)",
                 sm_count=132, compute_capability=(9, 0), clock_ghz=1.98, l2_bytes=50 * 2**20,
                 description="NVIDIA H100 80GB HBM3"),
    "h200": Chip("h200", "gpu", 150754820096, 989e12, 4800e9, "NVIDIA H200 datasheet (SXM 141GB)",
                 sm_count=132, compute_capability=(9, 0), clock_ghz=1.98, l2_bytes=50 * 2**20,
                 description="NVIDIA H200"),
}

# JAX preallocates this share of a GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION's default); a
# program fits a GPU when its peak is within it. TPU programs are checked by the compiler.
GPU_MEMORY_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class Target:
    chip: Chip
    topology: str  # "2x4" (TPU chips), "1x1x8" (GPU slices x hosts x devices)
    num_slices: int = 1

    @property
    def name(self) -> str:
        slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        return f"{self.chip.platform}:{self.chip.name}:{self.topology}{slices}"

    @property
    def num_devices(self) -> int:
        per_slice = math.prod(int(x) for x in self.topology.split("x"))
        return per_slice * self.num_slices

    @property
    def usable_bytes(self) -> float:
        """Memory a program may use per device."""
        frac = GPU_MEMORY_FRACTION if self.chip.platform == "gpu" else 1.0
        return self.chip.memory_bytes * frac


class TargetError(ValueError):
    """A --target the planner does not know."""


def _cloud_tpu_topology(chip: str, count: int) -> str:
    """Cloud TPU's `v5e-16` / `v5p-64` -> a libtpu topology (as accelerator tables do: v5e/v6e
    count chips on a 2-D torus, v4/v5p count TensorCores, two per chip, on a 3-D one)."""
    if chip in ("v5e", "v6e"):
        if count < 1 or count & (count - 1) or count > 256:
            raise TargetError(f"{chip}-{count}: a {chip} slice has 1-256 chips, a power of two")
        rows = 2 ** (int(math.log2(count)) // 2)
        return f"{rows}x{count // rows}"
    chips = count // 2
    if count % 2 or chips < 4 or chips & (chips - 1):
        raise TargetError(f"{chip}-{count}: {chip}-N counts TensorCores (two per chip); N must "
                          "be 8, 16, 32, ... (4, 8, 16, ... chips)")
    dims = [1, 1, 1]
    for _ in range(int(math.log2(chips))):  # grow the smallest dimension: 2x2x1, 2x2x2, 2x2x4
        dims[dims.index(min(dims))] *= 2
    a, b, c = sorted(dims)
    return f"{a}x{b}x{c}" if a > 1 else f"{b}x{c}x{a}"


def parse_target(text: str, num_slices: int = 1) -> Target:
    """'tpu:v5e:2x4', 'tpu:v5p-16', 'v5e-16', 'gpu:h100:1x1x8' -> Target."""
    parts = text.lower().split(":")
    if parts[0] in ("tpu", "gpu"):
        platform, parts = parts[0], parts[1:]
    else:
        platform = ""
    if len(parts) == 1 and (m := re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", parts[0])):
        parts = [m.group(1), _cloud_tpu_topology(m.group(1), int(m.group(2)))]
        platform = platform or "tpu"
    if len(parts) != 2 or parts[0] not in CHIPS:
        raise TargetError(f"--target={text}: expected tpu:CHIP:TOPOLOGY (e.g. tpu:v5e:2x4, "
                          f"tpu:v5p-16) or gpu:CHIP:SxHxD (e.g. gpu:h100:1x1x8); chips: "
                          f"{', '.join(sorted(CHIPS))}")
    chip = CHIPS[parts[0]]
    if platform and platform != chip.platform:
        raise TargetError(f"--target={text}: {chip.name} is a {chip.platform.upper()} chip")
    topology = parts[1]
    dims = 3 if chip.platform == "gpu" or chip.name in ("v4", "v5p") else 2
    if not re.fullmatch(r"[1-9]\d*" + r"x[1-9]\d*" * (dims - 1), topology):
        shape = "SxHxD" if chip.platform == "gpu" else "x".join("N" * dims)
        raise TargetError(f"--target={text}: {chip.name}'s topology is {shape}, got {topology!r}")
    if num_slices < 1:
        raise TargetError(f"--num_slices={num_slices}: must be >= 1")
    if chip.platform == "gpu" and num_slices > 1:
        raise TargetError("--num_slices: GPU targets give their slices as the first number of "
                          "SxHxD")
    return Target(chip, topology, num_slices)


def gpu_target_config(chip: Chip) -> str:
    """A GpuTargetConfigProto (text) for a deviceless compile: the card facts XLA's GPU compiler
    reads (SM count, compute capability, memory, bandwidth, cache, limits), from the chip table.
    Limits below are those of every NVIDIA card since Volta."""
    major, minor = chip.compute_capability
    return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {233472 if major >= 9 else 167936}
  threads_per_core_limit: 2048
  core_count: {chip.sm_count}
  fpus_per_core: {128 if major >= 9 else 64}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.memory_bandwidth)}
  l2_cache_size: {chip.l2_bytes}
  clock_rate_ghz: {chip.clock_ghz}
  device_memory_size: {chip.memory_bytes}
  shared_memory_per_block_optin: {232448 if major >= 9 else 166912}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
device_description_str: "{chip.description}"
"""


def devices(target: Target) -> list:
    """The target's compile-only devices, in slice-major order."""
    from jax.experimental import topologies

    # Compile-only use touches no TPU: let several processes (pytest workers, a plan beside a
    # test) load libtpu at once instead of taking its machine-wide lock file.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        if target.chip.platform == "tpu":
            kw = {"chip_config_name": "megacore"} if target.chip.name == "v4" else {}
            dims = [int(x) for x in target.topology.split("x")]
            if math.prod(dims) < 4:  # smaller than libtpu's default host (2x2x1): one host
                kw["chips_per_host_bounds"] = (dims + [1, 1])[:3]
            topo = topologies.get_topology_desc(
                platform="tpu", topology_name=f"{target.chip.name}:{target.topology}",
                num_slices=target.num_slices, **kw)
        else:
            topo = topologies.get_topology_desc(
                platform="cuda", target_config=gpu_target_config(target.chip),
                topology=target.topology)
    except Exception as e:  # the plugin missing or refusing the topology
        what = "libtpu (pip install -r requirements-aot.txt)" if target.chip.platform == "tpu" \
            else "the CUDA plugin and ptxas (pip install -r requirements-aot.txt)"
        raise TargetError(f"--target={target.name}: no compile-only devices ({what}): "
                          f"{' '.join(str(e).split())[:300]}") from None
    found = list(topo.devices)
    if len(found) != target.num_devices:
        raise TargetError(f"--target={target.name}: expected {target.num_devices} devices, the "
                          f"topology gave {len(found)}")
    return sorted(found, key=lambda d: (getattr(d, "slice_index", 0), d.id))
