import os

# Eight host devices so sharding tests can build real meshes on a CPU-only machine. Must be set
# before jax initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

import jax  # noqa: E402

# Pipeline stages and methods compile identical programs; a per-session persistent cache lets
# later ones reuse them (as the launch scripts do with their on-disk cache).
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="cwpo-xla-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (a failure reproduces; nothing flaky lands). Locally,
# hypothesis keeps exploring new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
