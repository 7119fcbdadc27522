"""A few-step training job (tests/engine/toy.py model, the real loop and checkpointer) run as a
separate process by the reliability tests, with faults injected at controlled points.

    python -m tests.reliability.train_job WORKDIR --steps 8 --save-every 2 [--kill WHERE:STEP]

--kill after_step:K        SIGKILL while the batch of step K+1 is produced (step K is logged)
--kill before_commit:K     SIGKILL in the save of step K once every item is written, just before
                           Orbax renames <K>.orbax-checkpoint-tmp to <K> (the commit)
--kill mid_write:K         SIGKILL in the save of step K while its array item is still an
                           uncommitted temporary folder inside the step's temporary folder
--nan-at K                 the batch of step K gets NaN reference log-probs
Exit codes: 0 finished, 3 NonFiniteError, 4 CheckpointError (message on stderr).
"""
from __future__ import annotations

import argparse
import functools
import os
import signal
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
from absl import logging as absl_logging
from flax import nnx

from cwpo_jax import losses, sharding
from cwpo_jax.data.batching import collate_pairs
from cwpo_jax.train import checkpoint, loop, optim, steps, tasks
from cwpo_jax.train.feeder import train_batches
from cwpo_jax.train.metrics import MetricsLogger
from cwpo_jax.train.state import init_train_state, split_model
from tests.engine.toy import ToyLM, tokenized_pairs
from tests.wrapped_batches import WrappedBatches

ITEMS = tokenized_pairs(20)
REF = np.random.default_rng(1).normal(-20, 3, (40,)).astype(np.float32)


def collate(index, *, shard):
    batch = collate_pairs(ITEMS, index, batch_size=4, buckets=(8, 16), pad_id=0, shard=shard)
    idx = np.maximum(batch["pair_index"], 0)
    batch["ref_logps"] = np.concatenate([REF[idx], REF[20 + idx]])
    return batch


def die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Feeder(WrappedBatches):
    """The loop's batches (train_batches) with faults: SIGKILL after kill_after batches, NaN
    reference log-probs in the batch of step nan_at."""

    kill_after = nan_at = None
    produced = 0

    def __next__(self):
        if self.kill_after is not None and self.produced == self.kill_after:
            die()
        out = super().__next__()
        self.produced += 1
        if self.produced == self.nan_at:
            out["ref_logps"][:] = np.nan
        return out


def install_save_hook(where: str, at: int) -> None:
    """SIGKILL inside Orbax's save of step `at`, at a commit point of its temporary folders."""
    from orbax.checkpoint._src.path import atomicity

    saving = {"step": None}
    original_save = checkpoint.Checkpointer.save

    def save(self, step, state, extra=None):
        saving["step"] = step
        return original_save(self, step, state, extra)

    checkpoint.Checkpointer.save = save
    target = str(at) if where == "before_commit" else "state"
    original_finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        if saving["step"] == at and self._final_path.name == target:
            die()
        return await original_finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--kill", default="")
    p.add_argument("--nan-at", type=int, default=None)
    p.add_argument("--ckpt-dir", default=None, help="default: WORKDIR/ckpt")
    args = p.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)

    mesh = sharding.make_mesh(2, 1, 1, devices=jax.devices()[:2])
    parts = split_model(ToyLM(rngs=nnx.Rngs(0)))
    optimizer, schedule = optim.make_optimizer(learning_rate=5e-2, total_steps=args.steps,
                                               warmup_steps=1)
    state, frozen, state_sh, frozen_sh = init_train_state(parts, optimizer, mesh)
    task = functools.partial(tasks.preference_task, pair_loss=losses.pair_loss_fn("dpo", beta=0.5),
                             beta=0.5, chunk_size=4)
    step_fn = steps.jit_train_step(
        steps.make_train_step(parts.graphdef, task, optimizer, schedule=schedule),
        mesh, state_sh, frozen_sh)
    feeder = Feeder(train_batches([p.length for p in ITEMS], collate, batch_size=4,
                                  num_steps=args.steps, micro_batches=2, seed=3))
    feeder.nan_at = args.nan_at
    if args.kill:
        where, at = args.kill.split(":")
        if where == "after_step":
            feeder.kill_after = int(at)
        else:
            install_save_hook(where, int(at))
    ckpt = checkpoint.Checkpointer(args.ckpt_dir or os.path.join(args.workdir, "ckpt"),
                                   keep=args.keep)
    logger = MetricsLogger(args.workdir, name="job", total_steps=args.steps, tensorboard=False)
    try:
        loop.train(step_fn=step_fn, state=state, frozen=frozen, batches=feeder, mesh=mesh,
                   config=loop.LoopConfig(num_steps=args.steps, save_every=args.save_every,
                                          name="job"),
                   checkpointer=ckpt, logger=logger)
    except loop.NonFiniteError as e:
        print(e, file=sys.stderr)
        return 3
    except checkpoint.CheckpointError as e:
        print(e, file=sys.stderr)
        return 4
    finally:
        logger.close()
    ckpt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
