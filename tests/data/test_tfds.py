"""TFDS builder: array_record shards written and read back without TensorFlow; grain on top."""

import sys

import grain
import pytest

from cwpo_jax.data import load_preferences, read_preferences
from cwpo_jax.data.splits import split_pairs
from cwpo_jax.data.tfds_builder import build_tfds, open_tfds
from tests.data.conftest import fixture


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    hh, _ = load_preferences(fixture("hh_rlhf.jsonl"), format="hh_rlhf")
    uf, _ = load_preferences(fixture("ultrafeedback.jsonl"), format="ultrafeedback")
    tl, _ = load_preferences(fixture("tldr_comparisons.json"), format="tldr")
    s = split_pairs(hh + uf + tl, seed=0, labelled=0.3, eval=0.2)
    splits = {"labelled": s.labelled, "unlabelled": s.unlabelled, "eval": s.eval}
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return splits, data_dir, build_tfds(splits, data_dir, config="custom")


def test_roundtrip_in_order(built):
    splits, data_dir, path = built
    assert path.endswith("cwpo_preferences/custom/1.0.0")
    for name, pairs in splits.items():
        src = open_tfds(path, name)
        assert len(src) == len(pairs)
        assert [src[i] for i in range(len(src))] == pairs  # same records, same order


def test_tfds_data_source_and_reader(built):
    import tensorflow_datasets as tfds

    splits, data_dir, _ = built
    raw = tfds.data_source("cwpo_preferences/custom", split="unlabelled", data_dir=data_dir)
    assert len(raw) == len(splits["unlabelled"])
    assert raw[0]["id"].decode() == splits["unlabelled"][0].id
    got = list(
        read_preferences(
            "tfds:cwpo_preferences/custom", format="pairs", split="eval", data_dir=data_dir
        )
    )
    assert got == splits["eval"]
    assert "tensorflow" not in sys.modules  # the array_record path never imports TensorFlow


def test_grain_reads_the_records(built):
    splits, _, path = built
    src = open_tfds(path, "unlabelled")
    ds = grain.MapDataset.source(src).shuffle(seed=3).map(lambda p: p.id)
    ids = list(ds)
    assert sorted(ids) == sorted(p.id for p in splits["unlabelled"])
    it = iter(ds.to_iter_dataset())
    head = [next(it) for _ in range(2)]
    state = it.get_state()
    again = iter(ds.to_iter_dataset())
    again.set_state(state)
    assert head + list(again) == ids


def test_building_needs_pairs(tmp_path):
    from cwpo_jax.data.tfds_builder import CwpoPreferences

    with pytest.raises(ValueError, match="build_tfds"):
        CwpoPreferences(
            data_dir=str(tmp_path), config="custom", file_format="array_record"
        ).download_and_prepare()
