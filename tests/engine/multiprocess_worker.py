"""Worker for the multi-process test: trains a few DPO steps on a (data=4) mesh and prints losses.

Run as `python -m tests.engine.multiprocess_worker OUT [PROCESS_ID NUM_PROCESSES PORT]`; with
process arguments it joins a jax.distributed job on 127.0.0.1 using CPU collectives (gloo).
"""
import json
import os
import sys

if len(sys.argv) > 2:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{sys.argv[4]}"
    os.environ["JAX_PROCESS_ID"] = sys.argv[2]
    os.environ["JAX_NUM_PROCESSES"] = sys.argv[3]
else:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from cwpo_jax import sharding  # noqa: E402


def main():
    sharding.maybe_initialize_distributed()
    from tests.engine.test_loop import run  # same model, data and optimizer as the loop tests

    out_dir = sys.argv[1]
    assert len(jax.devices()) == 4, jax.devices()
    mesh = sharding.make_mesh(4, 1, 1)
    state = run(out_dir, 3, save_every=0, mesh=mesh)
    leaves = jax.tree.leaves(state.params)
    checksum = float(sum(jax.numpy.sum(x * x) for x in leaves))
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump({"checksum": checksum, "processes": jax.process_count()}, f)


if __name__ == "__main__":
    main()
