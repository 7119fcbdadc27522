"""Token store: exact round trip of the encoder's items, keys, crash safety, batches equal to
the in-memory items' batches, and reuse by the stages' helper."""

import copy
import dataclasses
import json
import os
import types

import numpy as np
import pytest

from cwpo_jax.data import load_preferences, token_store
from cwpo_jax.data.batching import (
    collate_packed_pairs,
    collate_packed_sequences,
    collate_pairs,
    collate_sequences,
    pack_rows,
    pair_sequences,
)
from cwpo_jax.data.tokenize import PairTokenizer
from cwpo_jax.stages import common
from tests.data.conftest import fixture

SHARDS = [(0, 1), (0, 2), (1, 2)]


@pytest.fixture(scope="module")
def pairs():
    hh, _ = load_preferences(fixture("hh_rlhf.jsonl"), format="hh_rlhf")
    uf, _ = load_preferences(fixture("ultrafeedback.jsonl"), format="ultrafeedback")
    return hh + uf


def encoder(tok, **kw):
    return PairTokenizer(tok, **{"max_prompt_len": 24, "max_len": 40, **kw})


def pair_store(enc, pairs, root):
    directory = token_store.store_dir(str(root), "pairs", token_store.pairs_key(enc, pairs))
    token_store.ensure_store(directory, "pairs", lambda: enc.encode_pairs(pairs), enc)
    return directory


def sequence_store(enc, prompts, responses, root):
    directory = token_store.store_dir(str(root), "sequences",
                                      token_store.sequences_key(enc, prompts, responses))
    token_store.ensure_store(directory, "sequences",
                             lambda: enc.encode_sequences(prompts, responses), enc)
    return directory


def assert_same_items(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert type(a) is type(b)
        for f in dataclasses.fields(b):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert x.dtype == np.int32
            np.testing.assert_array_equal(x, y)


def test_round_trip_of_pairs_and_sequences(tmp_path, pairs, chat_tokenizer):
    enc = encoder(chat_tokenizer)
    want = encoder(chat_tokenizer).encode_pairs(pairs)
    store = token_store.TokenStore(pair_store(enc, pairs, tmp_path))
    assert_same_items(store, want)
    chosen = store[0].chosen  # a read-only slice of the map, not a copy
    assert not chosen.flags.owndata and not chosen.flags.writeable
    np.testing.assert_array_equal(store.lengths, [p.length for p in want])
    for f in ("prompt", "chosen", "rejected"):
        np.testing.assert_array_equal(store.field_lengths(f), [len(getattr(p, f)) for p in want])
    assert store.stats == enc.stats and enc.stats.prompts == len(pairs)
    assert store.stats.prompts_truncated > 0  # the limits bite on these fixtures
    np.testing.assert_array_equal(store[-1].rejected, want[-1].rejected)
    with pytest.raises(IndexError):
        store[len(pairs)]
    view = store.select([4, 0, 4])
    assert_same_items(view, [want[4], want[0], want[4]])
    np.testing.assert_array_equal(view.lengths, [want[i].length for i in (4, 0, 4)])
    assert_same_items(view.select([1]), [want[0]])

    prompts, responses = [p.prompt for p in pairs], [p.chosen for p in pairs]
    sequences = token_store.TokenStore(
        sequence_store(encoder(chat_tokenizer), prompts, responses, tmp_path))
    want_seq = encoder(chat_tokenizer).encode_sequences(prompts, responses)
    assert_same_items(sequences, want_seq)
    np.testing.assert_array_equal(sequences.lengths, [s.length for s in want_seq])


def test_empty_store(tmp_path, chat_tokenizer):
    store = token_store.TokenStore(pair_store(encoder(chat_tokenizer), [], tmp_path))
    assert len(store) == 0 and store.lengths.shape == (0,)


def test_any_input_change_gives_a_new_key(pairs, chat_tokenizer, plain_tokenizer):
    enc = encoder(chat_tokenizer)
    key = token_store.pairs_key(enc, pairs)
    edited = [dataclasses.replace(pairs[0], rejected=pairs[0].rejected + "!")] + pairs[1:]
    other_template = copy.deepcopy(chat_tokenizer)
    other_template.chat_template = chat_tokenizer.chat_template.replace("\n", " ", 1)
    others = [
        token_store.pairs_key(enc, edited),
        token_store.pairs_key(enc, pairs[::-1]),
        token_store.pairs_key(encoder(chat_tokenizer, max_prompt_len=23), pairs),
        token_store.pairs_key(encoder(chat_tokenizer, max_len=41), pairs),
        token_store.pairs_key(encoder(chat_tokenizer, max_response_len=8), pairs),
        token_store.pairs_key(encoder(plain_tokenizer), pairs),
        token_store.pairs_key(encoder(other_template), pairs),
        token_store.sequences_key(enc, [p.prompt for p in pairs], [p.chosen for p in pairs]),
    ]
    assert token_store.pairs_key(encoder(chat_tokenizer), pairs) == key
    assert len({key, *others}) == len(others) + 1


class CountingEncoder(PairTokenizer):
    """Counts encode_pairs calls (a store hit makes none)."""

    calls = 0

    def encode_pairs(self, pairs):
        CountingEncoder.calls += 1
        return super().encode_pairs(pairs)


def counting(tok) -> CountingEncoder:
    CountingEncoder.calls = 0
    return CountingEncoder(tok, max_prompt_len=24, max_len=40)


def test_half_written_store_is_not_read_and_is_rebuilt(tmp_path, pairs, chat_tokenizer):
    want = encoder(chat_tokenizer).encode_pairs(pairs)
    enc = counting(chat_tokenizer)
    directory = token_store.store_dir(str(tmp_path), "pairs", token_store.pairs_key(enc, pairs))
    # A writer killed before its rename: only the temporary folder exists.
    stale = tmp_path / f".{os.path.basename(directory)}.tmp-killed"
    stale.mkdir()
    (stale / "prompt.npy").write_bytes(b"partial")
    assert token_store.open_store(directory) is None
    assert pair_store(enc, pairs, tmp_path) == directory
    assert not stale.exists() and CountingEncoder.calls == 1
    assert_same_items(token_store.open_store(directory), want)
    pair_store(enc, pairs, tmp_path)
    assert CountingEncoder.calls == 1  # complete: read, not rebuilt
    # A file missing, or offsets that do not match meta.json: rebuilt.
    for damage in ("missing", "offsets"):
        if damage == "missing":
            os.remove(os.path.join(directory, "chosen.npy"))
        else:
            np.save(os.path.join(directory, "rejected_offsets.npy"), np.arange(3))
        assert token_store.open_store(directory) is None
        calls = CountingEncoder.calls
        pair_store(enc, pairs, tmp_path)
        assert CountingEncoder.calls == calls + 1
        assert_same_items(token_store.open_store(directory), want)
    with open(os.path.join(directory, "meta.json")) as f:
        assert json.load(f)["count"] == len(pairs)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(directory)]


def test_the_stages_helper_tokenises_once(tmp_path, pairs, chat_tokenizer):
    cfg = types.SimpleNamespace(output_dir=str(tmp_path))
    first = common.pair_store(cfg, counting(chat_tokenizer), pairs)
    again = common.pair_store(cfg, counting(chat_tokenizer), pairs)
    assert CountingEncoder.calls == 0 and again.directory == first.directory
    assert again.stats == first.stats and first.stats.prompts == len(pairs)
    assert os.path.dirname(first.directory) == os.path.join(str(tmp_path), "tokens")
    assert_same_items(again, encoder(chat_tokenizer).encode_pairs(pairs))
    prompts, responses = [p.prompt for p in pairs], [p.rejected for p in pairs]
    seq = common.sequence_store(cfg, encoder(chat_tokenizer), prompts, responses)
    assert seq.kind == "sequences"
    assert_same_items(seq, encoder(chat_tokenizer).encode_sequences(prompts, responses))


def test_the_stages_helper_writes_a_long_split_in_chunks(tmp_path, pairs, chat_tokenizer,
                                                        monkeypatch):
    """Above common.STORE_CHUNK items the split is tokenised a chunk at a time (no call sees
    more) into parts that join into the store one call would write; no part is left."""
    sizes = []

    class ChunkEncoder(PairTokenizer):
        def encode_pairs(self, chunk):
            sizes.append(len(chunk))
            return super().encode_pairs(chunk)

    monkeypatch.setattr(common, "STORE_CHUNK", 3)
    cfg = types.SimpleNamespace(output_dir=str(tmp_path))
    store = common.pair_store(cfg, ChunkEncoder(chat_tokenizer, max_prompt_len=24, max_len=40),
                              pairs)
    assert len(pairs) > 6 and max(sizes) <= 3 and sum(sizes) == len(pairs)
    whole = encoder(chat_tokenizer)
    assert_same_items(store, whole.encode_pairs(pairs))
    assert store.stats == whole.stats  # the parts' counts summed
    assert os.listdir(os.path.join(str(tmp_path), "tokens")) == [os.path.basename(store.directory)]


@pytest.mark.parametrize("shard", SHARDS)
def test_batches_from_the_store_equal_batches_from_the_items(tmp_path, pairs, chat_tokenizer,
                                                             shard):
    enc = encoder(chat_tokenizer)
    items = encoder(chat_tokenizer).encode_pairs(pairs)
    store = token_store.TokenStore(pair_store(enc, pairs, tmp_path))
    n = len(items)
    rng = np.random.default_rng(0)
    swap, weights = rng.random(n) < 0.5, rng.random(n).astype(np.float32)
    index = rng.permutation(n)[:5]  # 5 items in a batch of 6: one padding row
    kw = dict(batch_size=6, buckets=(16, 32, 64, 128), pad_id=0, shard=shard)
    longest = int(max(max(len(p.chosen), len(p.rejected)) for p in items))
    batches = {
        "pairs": lambda x: collate_pairs(x, index, swap=swap, weights=weights, **kw),
        "packed pairs": lambda x: collate_packed_pairs(x, index, response_len=longest,
                                                       swap=swap, weights=weights, **kw),
    }
    selected = rng.permutation(n)[:4]
    batches["selected pairs"] = lambda x: collate_pairs(
        x if isinstance(x, list) else x.select(selected), [2, 0, 3], **kw)
    for name, make in batches.items():
        want_items = [items[i] for i in selected] if name == "selected pairs" else items
        want, got = make(want_items), make(store)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")

    want_seq, got_seq = pair_sequences(items), pair_sequences(store)
    assert len(got_seq) == len(want_seq) == 2 * n
    rows = pack_rows([len(s) for s in want_seq], row_len=128, max_segments=4)
    pkw = dict(batch_size=4, row_len=128, max_segments=4, pad_id=0, shard=shard)
    order = np.arange(min(3, len(rows)))
    want = collate_packed_sequences(want_seq, rows, order, **pkw)
    got = collate_packed_sequences(got_seq, rows, order, **pkw)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"packed sequences: {key}")

    prompts, responses = [p.prompt for p in pairs], [p.chosen for p in pairs]
    seq_items = encoder(chat_tokenizer).encode_sequences(prompts, responses)
    seq_store = token_store.TokenStore(
        sequence_store(encoder(chat_tokenizer), prompts, responses, tmp_path))
    want = collate_sequences(seq_items, index, weights=weights, **kw)
    got = collate_sequences(seq_store, index, weights=weights, **kw)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"sequences: {key}")


@pytest.mark.parametrize("count", [1, 3, 20])
def test_parts_tokenised_apart_merge_into_the_whole_store(tmp_path, pairs, chat_tokenizer,
                                                          count):
    """What n processes write (slice i into part_dir(directory, i, n)) merges into the store
    of the whole list, stats included; 20 parts of fewer pairs leave some empty."""
    whole = token_store.TokenStore(pair_store(encoder(chat_tokenizer), pairs, tmp_path / "one"))
    directory = token_store.store_dir(str(tmp_path / "parts"), "pairs", whole.key)
    for i in range(count):
        enc = encoder(chat_tokenizer)
        part = pairs[i * len(pairs) // count:(i + 1) * len(pairs) // count]
        token_store.ensure_store(token_store.part_dir(directory, i, count), "pairs",
                                 lambda: enc.encode_pairs(part), enc)
    token_store.merge_parts(directory, count)
    merged = token_store.TokenStore(directory)
    assert_same_items(merged, list(whole))
    assert merged.stats == whole.stats
    assert os.listdir(tmp_path / "parts") == [os.path.basename(directory)]


def _worker_env():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env, root


@pytest.mark.slow
def test_two_processes_tokenise_their_chunks_into_the_one_process_store(tmp_path,
                                                                          chat_tokenizer):
    """Two jax.distributed processes (chunks of 3 items) split the tokenising between them and
    leave the store one process writes, with no part folder behind."""
    import subprocess
    import sys

    import portpicker

    tok_dir = str(tmp_path / "tokenizer")
    chat_tokenizer.save_pretrained(tok_dir)
    env, root = _worker_env()
    worker = [sys.executable, "-m", "tests.data.store_worker"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(worker + [str(one), tok_dir], env=env, cwd=root, check=True, timeout=300)
    port = str(portpicker.pick_unused_port())
    procs = [subprocess.Popen(worker + [str(two), tok_dir, str(i), "2", port], env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    for p in procs:
        out = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, out[-3000:]
    single = json.loads((one / "calls-0.json").read_text())
    calls = [json.loads((two / f"calls-{i}.json").read_text()) for i in range(2)]
    assert all(c["sizes"] and max(c["sizes"]) <= 3 for c in calls)  # both tokenised chunks
    assert sum(sum(c["sizes"]) for c in calls) == single["items"] == sum(single["sizes"])
    assert calls[0]["store"] == calls[1]["store"] == single["store"]
    assert os.listdir(two / "tokens") == [single["store"]]
    assert_same_items(token_store.TokenStore(str(two / "tokens" / single["store"])),
                      list(token_store.TokenStore(str(one / "tokens" / single["store"]))))
