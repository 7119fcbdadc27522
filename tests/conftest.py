import os

# Eight host devices so sharding tests can build real meshes on a CPU-only machine. Must be set
# before jax initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
