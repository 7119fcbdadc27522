"""Worker for the multi-process preemption test: the loop tests' toy DPO run on a data mesh over
all processes; with KILL_AT, process 1 alone gets SIGTERM while producing that step's batch.

Run through launch/multiprocess.py: `python -m tests.engine.preempt_worker OUT [KILL_AT]`.
Writes OUT/status-<process>.json: {"preempted_at": step or null}.
"""
import json
import os
import re
import sys
import time

import jax

from cwpo_jax import sharding
from cwpo_jax.train import loop


def main():
    sharding.maybe_initialize_distributed()
    from tests.engine import test_loop  # same model, data and optimizer as the loop tests

    # Steps as long as real ones relative to the preemption sync, which agrees on the step to
    # save at in the background (a coordination-service round trip) while training goes on.
    feeder_next = test_loop.FaultyFeeder.__next__

    def slow_next(self):
        time.sleep(0.3)
        return feeder_next(self)

    test_loop.FaultyFeeder.__next__ = slow_next

    out = sys.argv[1]
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 and jax.process_index() == 1 else None
    preempted_at = None
    try:
        test_loop.run(out, 8, kill_at=kill_at, save_every=0, mesh=sharding.make_mesh(jax.device_count()))
    except loop.Preempted as e:
        preempted_at = int(re.search(r"step (\d+)", str(e)).group(1))
    with open(os.path.join(out, f"status-{jax.process_index()}.json"), "w") as f:
        json.dump({"preempted_at": preempted_at}, f)


if __name__ == "__main__":
    main()
