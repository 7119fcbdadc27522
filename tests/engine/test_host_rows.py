"""Each host's rows of a global batch: the packed collates' shards assemble the global batch, and
the on-device reorder turns host blocks of [chosen; rejected] rows into the global pair layout."""
import jax
import numpy as np
import pytest

from cwpo_jax import sharding
from cwpo_jax.data.batching import (
    collate_packed_pairs,
    collate_packed_sequences,
    pack_rows,
    pair_sequences,
)

from tests.engine.toy import tokenized_pairs

ITEMS = tokenized_pairs(7)


def pairs_major(blocks: list[np.ndarray]) -> np.ndarray:
    """Host blocks [c_i; r_i] -> [c_0; c_1; ...; r_0; r_1; ...]."""
    halves = [np.split(b, 2) for b in blocks]
    return np.concatenate([h[0] for h in halves] + [h[1] for h in halves])


@pytest.mark.parametrize("hosts", [2, 4])
def test_packed_pair_shards_assemble_the_global_batch(hosts):
    index = np.asarray([5, 2, 6, 0, 3, 1])  # 6 pairs in a batch of 8: two padding rows
    kw = dict(batch_size=8, buckets=(16, 32, 64), response_len=16, pad_id=0,
              weights=np.linspace(0.1, 1, 7, dtype=np.float32), swap=np.arange(7) % 2 == 0)
    whole = collate_packed_pairs(ITEMS, index, **kw)
    parts = [collate_packed_pairs(ITEMS, index, shard=(h, hosts), **kw) for h in range(hosts)]
    for key, arr in whole.items():
        blocks = [p[key] for p in parts]
        got = pairs_major(blocks) if key.startswith("response_") else np.concatenate(blocks)
        np.testing.assert_array_equal(got, arr, err_msg=key)


def test_packed_sequence_shards_assemble_the_global_batch():
    sequences = pair_sequences(ITEMS)
    rows = pack_rows([len(s) for s in sequences], row_len=64, max_segments=4)
    kw = dict(batch_size=4, row_len=64, max_segments=4, pad_id=0)
    index = np.arange(min(3, len(rows)))
    whole = collate_packed_sequences(sequences, rows, index, **kw)
    parts = [collate_packed_sequences(sequences, rows, index, shard=(h, 2), **kw)
             for h in range(2)]
    for key, arr in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), arr, err_msg=key)


def test_device_reorder_gives_the_pair_layout_and_keeps_the_batch_sharding():
    mesh = sharding.make_mesh(4, 1, 1, devices=jax.devices()[:4])
    blocks = [np.arange(b * 1000, b * 1000 + 2 * 12 * 5).reshape(2, 12, 5) for b in range(2)]
    x = sharding.shard_batch({"x": np.concatenate(blocks, axis=1)}, mesh, 1)["x"]  # [A, rows, T]
    got = sharding._pairs_major(mesh, 3, 1, 2)(x)
    want = np.stack([pairs_major([b[a] for b in blocks]) for a in range(2)])
    np.testing.assert_array_equal(np.asarray(got), want)
    assert got.sharding.is_equivalent_to(x.sharding, 3)


def test_one_process_holds_the_whole_batch():
    assert sharding.process_block(sharding.make_mesh(4, 1, 1, devices=jax.devices()[:4])) == (0, 1)
