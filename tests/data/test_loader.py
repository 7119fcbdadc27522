"""grain pipelines: determinism, exact resume mid-epoch and across epochs, threads."""

import json

import grain
import numpy as np
import pytest

from cwpo_jax.data.loader import BatchPlan, pair_dataset, prompt_dataset, sequence_dataset
from cwpo_jax.data.tokenize import TokenizedPair, TokenizedSequence


def items(n=37, seed=0):
    rng = np.random.default_rng(seed)
    r = lambda lo, hi: rng.integers(1, 50, rng.integers(lo, hi)).astype(np.int32)
    return [TokenizedPair(r(1, 20), r(1, 30), r(1, 30)) for _ in range(n)]


ITEMS = items()


def take(it, k):
    return [next(it) for _ in range(k)]


def same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def make(**kw):
    kw = {"batch_size": 4, "buckets": (16, 32, 64), "pad_id": 0, "seed": 7, "num_epochs": 3, **kw}
    return pair_dataset(ITEMS, **kw)


@pytest.mark.parametrize("stop", [3, 10, 12])  # mid-epoch, first batch of epoch 2, later
def test_resume_gives_the_same_following_batches(stop):
    ds = make()
    assert len(ds) == 3 * 10  # ceil(37 / 4) batches per epoch
    reference = list(ds.to_iter_dataset())
    it = iter(ds.to_iter_dataset())
    take(it, stop)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
    resumed = iter(make().to_iter_dataset())  # a fresh pipeline, as after a restart
    resumed.set_state(state)
    assert same(take(resumed, 8), reference[stop : stop + 8])


def test_resume_with_reader_threads():
    opts = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
    reference = list(make().to_iter_dataset())
    it = iter(make().to_iter_dataset(opts))
    take(it, 5)
    state = it.get_state()
    resumed = iter(make().to_iter_dataset(opts))
    resumed.set_state(state)
    assert same(list(resumed), reference[5:])


def test_epochs_cover_every_pair_once_and_differ():
    batches = list(make())
    per_epoch = 10
    for e in range(3):
        idx = np.concatenate(
            [b["pair_index"] for b in batches[e * per_epoch : (e + 1) * per_epoch]]
        )
        assert sorted(idx[idx >= 0].tolist()) == list(range(37))
    first = [b["pair_index"].tolist() for b in batches[:per_epoch]]
    second = [b["pair_index"].tolist() for b in batches[per_epoch : 2 * per_epoch]]
    assert first != second
    assert all(b["input_ids"].shape[1] in (16, 32, 64) for b in batches)
    assert not same(list(make(seed=8)), batches)


def test_weights_and_swap_reach_the_batch():
    w = np.linspace(0, 1, 37).astype(np.float32)
    swap = np.arange(37) % 2 == 1
    for b in make(weights=w, swap=swap, num_epochs=1):
        for row, i in enumerate(b["pair_index"]):
            if i < 0:
                assert b["weights"][row] == 0
                continue
            assert b["weights"][row] == w[i]
            p = ITEMS[i]
            first = p.rejected if swap[i] else p.chosen
            n = len(p.prompt) + len(first)
            np.testing.assert_array_equal(b["input_ids"][row, len(p.prompt) : n], first)
    with pytest.raises(ValueError, match=r"weights has shape \(3,\), expected \(37,\)"):
        make(weights=np.ones(3))
    with pytest.raises(ValueError, match="finite and >= 0"):
        make(weights=-w)


def test_sequence_and_prompt_datasets():
    seqs = [TokenizedSequence(p.prompt, p.chosen) for p in ITEMS]
    batches = list(sequence_dataset(seqs, batch_size=8, buckets=(64,), pad_id=0, shuffle=False))
    assert len(batches) == 5 and batches[-1]["index"].tolist()[-3:] == [-1, -1, -1]
    prompts = list(prompt_dataset(seqs, batch_size=8, buckets=(8, 16, 32), pad_id=0))
    idx = np.concatenate([b["index"] for b in prompts])
    assert sorted(idx[idx >= 0].tolist()) == list(range(37))
    for b in prompts:  # left padding: every real row ends on a real token
        real = b["index"] >= 0
        assert b["attention_mask"][real, -1].all()


def test_batch_plan_pickles_and_checks_args():
    import pickle

    plan = BatchPlan(
        [3, 1, 2], 2, seed=0, num_epochs=2, shuffle=True, window=4, drop_remainder=False
    )
    clone = pickle.loads(pickle.dumps(plan))
    assert all(np.array_equal(plan[k], clone[k]) for k in range(len(plan)))
    with pytest.raises(IndexError):
        plan[len(plan)]
    with pytest.raises(ValueError, match="num_epochs"):
        BatchPlan([1], 1, seed=0, num_epochs=0, shuffle=True, window=1, drop_remainder=False)


@pytest.mark.parametrize("kind", ["pairs", "sequences", "prompts"])
def test_host_shards_assemble_the_global_batch(kind):
    seqs = [TokenizedSequence(p.prompt, p.chosen) for p in ITEMS]
    build = {
        "pairs": lambda **kw: pair_dataset(ITEMS, buckets=(16, 32, 64), seed=7, **kw),
        "sequences": lambda **kw: sequence_dataset(seqs, buckets=(16, 32, 64), seed=7, **kw),
        "prompts": lambda **kw: prompt_dataset(seqs, buckets=(8, 16, 32), **kw),
    }[kind]
    whole = list(build(batch_size=8, pad_id=0))
    hosts = [list(build(batch_size=8, pad_id=0, shard=(h, 2))) for h in range(2)]
    for k, g in enumerate(whole):
        parts = [h[k] for h in hosts]
        for key, arr in g.items():
            if kind == "pairs" and arr.shape[0] == 16:  # [2B, T]: chosen halves, then rejected
                local = [np.split(p[key], 2) for p in parts]
                got = np.concatenate([rows[0] for rows in local] + [rows[1] for rows in local])
            else:
                got = np.concatenate([p[key] for p in parts])
            np.testing.assert_array_equal(got, arr, err_msg=f"batch {k} key {key}")
    with pytest.raises(ValueError, match="divisible"):
        build(batch_size=8, pad_id=0, shard=(0, 3))


def test_dataset_repr_stays_short():
    """grain names a transform by repr() on first access; printing every item made the first
    batch of a 4k-pair dataset take seconds."""
    many = ITEMS * 100
    ds = pair_dataset(many, batch_size=4, buckets=(64,), pad_id=0)
    ds[0]
    assert len(str(ds)) < 1000, str(ds)[:200]
