"""Run a launch script as N local CPU processes joined by jax.distributed, so the multi-host code
paths (collectives over gloo, process-0-only writes, preemption sync, gathered exports) run on one
machine before a pod config meets a pod:

    python launch/multiprocess.py --processes=2 -- launch/pipeline.py \\
        --config=configs/tiny.py --config.output_dir=DIR

Each child gets the variables cwpo_jax.sharding.maybe_initialize_distributed reads
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) and --devices_per_process CPU
devices. SIGTERM and SIGINT are forwarded to every child. When a child fails the others are
stopped (they would wait in a collective forever); the exit status is the first failure's.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

STOP_GRACE_S = 30  # after a failure: SIGTERM the others, then SIGKILL after this long


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(process_id: int, processes: int, devices: int, port: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    if processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                   JAX_PROCESS_ID=str(process_id))
    return env


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by a signal: 128 + sig


def run(command: list[str], processes: int, devices: int) -> int:
    port = free_port()
    children = [subprocess.Popen([sys.executable, *command],
                                 env=child_env(i, processes, devices, port),
                                 start_new_session=True)  # signals reach them through us only
                for i in range(processes)]

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    failed = None
    while any(c.poll() is None for c in children):
        if failed is None:
            failed = next((c for c in children if c.poll() not in (None, 0)), None)
            if failed is not None:
                print(f"[multiprocess] process {children.index(failed)} exited with status "
                      f"{exit_status(failed.returncode)}; stopping the others", file=sys.stderr)
                forward(signal.SIGTERM, None)
                deadline = time.monotonic() + STOP_GRACE_S
        elif time.monotonic() > deadline:
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.2)
    if failed is None:
        failed = next((c for c in children if c.returncode != 0), None)
    return 0 if failed is None else exit_status(failed.returncode)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__.strip().splitlines()[3], file=sys.stderr)  # the usage line
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--devices_per_process", type=int, default=1)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if args.processes < 1 or args.devices_per_process < 1 or not command:
        parser.error("need --processes >= 1, --devices_per_process >= 1 and a script after --")
    return run(command, args.processes, args.devices_per_process)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
