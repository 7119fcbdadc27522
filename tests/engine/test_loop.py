"""The loop: exact resume, SIGTERM checkpoint, NaN stop, metrics file."""
import functools
import json
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from cwpo_jax import losses, sharding
from cwpo_jax.data.batching import collate_pairs
from cwpo_jax.train import loop, optim, steps, tasks
from cwpo_jax.train.checkpoint import Checkpointer
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


class FaultyFeeder(WrappedBatches):
    """The loop's batches (train_batches) with faults: while producing the batch of step
    `kill_at` sends SIGTERM to this process; the batch of step `nan_at` gets NaN reference
    log-probs."""

    kill_at = nan_at = None
    produced = 0

    def __next__(self):
        out = super().__next__()
        self.produced += 1
        if self.produced == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.produced == self.nan_at:
            out["ref_logps"][:] = np.nan
        return out


def run(workdir, num_steps, *, kill_at=None, nan_at=None, save_every=2, log_every=1, mesh=None):
    mesh = mesh or sharding.make_mesh(2, 1, 1, devices=jax.devices()[:2])
    parts = split_model(ToyLM(rngs=nnx.Rngs(0)))
    optimizer, schedule = optim.make_optimizer(learning_rate=5e-2, total_steps=8, warmup_steps=1)
    state, frozen, state_sh, frozen_sh = init_train_state(parts, optimizer, mesh)
    task = functools.partial(tasks.preference_task, pair_loss=losses.pair_loss_fn("dpo", beta=0.5),
                             beta=0.5, chunk_size=4)
    step = steps.jit_train_step(
        steps.make_train_step(parts.graphdef, task, optimizer, schedule=schedule),
        mesh, state_sh, frozen_sh)
    feeder = FaultyFeeder(train_batches([p.length for p in ITEMS], collate, batch_size=4,
                                        num_steps=num_steps, micro_batches=2, seed=3))
    feeder.kill_at, feeder.nan_at = kill_at, nan_at
    ckpt = Checkpointer(os.path.join(workdir, "ckpt"), keep=2)
    logger = MetricsLogger(workdir, name="test", total_steps=num_steps, tensorboard=False)
    try:
        return loop.train(step_fn=step, state=state, frozen=frozen, batches=feeder, mesh=mesh,
                          config=loop.LoopConfig(num_steps=num_steps, save_every=save_every,
                                                 log_every=log_every),
                          checkpointer=ckpt, logger=logger)
    finally:
        logger.close()


def losses_by_step(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("full"))
    state = run(d, 8)
    return d, state


def test_resume_after_stop_gives_identical_losses(uninterrupted, tmp_path):
    full_dir, full_state = uninterrupted
    d = str(tmp_path)
    run(d, 5, save_every=2)  # stops after step 5; checkpoints at 2, 4, 5
    state = run(d, 8)  # resumes from 5
    want = losses_by_step(full_dir)
    got = losses_by_step(d)
    assert sorted(got) == list(range(1, 9))
    for s in range(1, 9):
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7), s
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(full_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_sigterm_writes_checkpoint_and_resume_matches(uninterrupted, tmp_path):
    full_dir, _ = uninterrupted
    d = str(tmp_path)
    with pytest.raises(loop.Preempted, match="step 3"):
        run(d, 8, kill_at=3, save_every=0)
    assert Checkpointer(os.path.join(d, "ckpt")).latest_step() == 3
    run(d, 8, save_every=0)
    want, got = losses_by_step(full_dir), losses_by_step(d)
    for s in range(4, 9):
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7), s


def test_nan_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    d = str(tmp_path)
    with pytest.raises(loop.NonFiniteError, match=r"step 4: .*Last good checkpoint: .*ckpt/2"):
        run(d, 8, nan_at=4, save_every=2)
    ckpt = Checkpointer(os.path.join(d, "ckpt"))
    assert ckpt.latest_step() == 2


def test_metrics_leave_the_device_only_at_log_and_save_steps(tmp_path, monkeypatch):
    reads = []
    device_get = jax.device_get

    def recording(x):
        if isinstance(x, list):  # the loop's pending metrics
            reads.append(len(x))
        return device_get(x)

    monkeypatch.setattr(jax, "device_get", recording)
    run(str(tmp_path), 8, save_every=6, log_every=4)
    assert reads == [4, 2, 2, 0]  # log 4, save 6, log 8, final save (nothing left)


def test_nan_between_log_steps_stops_at_the_next_one_without_saving(tmp_path):
    d = str(tmp_path)
    with pytest.raises(loop.NonFiniteError, match=r"step 2: loss nan .*Last good checkpoint: "
                                                  r"none \(seen at step 4"):
        run(d, 8, nan_at=2, save_every=0, log_every=4)
    assert Checkpointer(os.path.join(d, "ckpt")).latest_step() is None
    assert not os.path.exists(os.path.join(d, "metrics.jsonl")) or not losses_by_step(d)


def test_metrics_have_throughput_and_lr(uninterrupted):
    full_dir, _ = uninterrupted
    with open(os.path.join(full_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 8
    for key in ("loss", "grad_norm", "learning_rate", "tokens_per_s", "rewards/accuracies"):
        assert key in records[0]
    assert 0.0 < records[0]["padding_share"] < 1.0  # length buckets leave some padding
    assert records[0]["learning_rate"] == 0.0 and records[1]["learning_rate"] > 0


def test_loop_releases_freed_heap_before_and_after_the_first_step(tmp_path, monkeypatch):
    events = []
    shard_batch = sharding.shard_batch

    def recording_shard_batch(*args, **kwargs):
        events.append("batch")
        return shard_batch(*args, **kwargs)

    monkeypatch.setattr(loop, "release_freed_heap", lambda: events.append("release"))
    monkeypatch.setattr(sharding, "shard_batch", recording_shard_batch)
    run(str(tmp_path), 3, save_every=2)
    assert events == ["release", "batch", "release", "batch", "batch"]
    events.clear()
    run(str(tmp_path), 4, save_every=2)  # resumes after step 3: the same two releases
    assert events == ["release", "batch", "release"]


def test_checkpoint_from_the_in_memory_feeder_is_refused_clearly(tmp_path):
    d = str(tmp_path)
    state = run(d, 2, save_every=0)
    ckpt = Checkpointer(os.path.join(d, "ckpt"))
    ckpt.save(3, state, {"data": {"epoch": 0, "position": 3}})  # the pre-grain data state
    ckpt.close()
    with pytest.raises(ValueError, match=r"ckpt/3 stores data state .* older cwpo_jax"):
        run(d, 8)
