import importlib.util
import os

import pytest

# The TPU and GPU compilers come from requirements-aot.txt. CI installs them and sets
# CWPO_REQUIRE_AOT=1, so there these tests fail rather than skip when they are missing.
HAVE_AOT = all(importlib.util.find_spec(m) for m in ("libtpu", "jax_plugins.xla_cuda12"))


def pytest_collection_modifyitems(config, items):
    if HAVE_AOT:
        return
    if os.environ.get("CWPO_REQUIRE_AOT") == "1":
        raise pytest.UsageError("CWPO_REQUIRE_AOT=1 but the compilers of requirements-aot.txt "
                                "are not installed")
    skip = pytest.mark.skip(reason="pip install -r requirements-aot.txt (TPU/GPU compilers)")
    for item in items:
        if "tests/plan" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
