"""save_pretrained round trips, sharded safetensors, and clear errors on bad checkpoints."""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cwpo_jax.models import from_pretrained, reward_model_from_pretrained, save_pretrained
from tests.models.conftest import fixture_dir, golden


def _keys(path):
    return set(load_file(os.path.join(path, "model.safetensors")).keys())


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "opt", "opt350", "bert"])
def test_save_pretrained_round_trip(family, tmp_path):
    model = from_pretrained(fixture_dir(family))
    out = tmp_path / family
    save_pretrained(model, out)
    # Same tensor names as transformers wrote (so transformers loads it), same logits back.
    assert _keys(out) == _keys(fixture_dir(family)) - {"embeddings.position_ids"}
    # The config carries every field transformers wrote for this model, with equal values
    # (scripts/make_model_fixtures.py also loads such an export with transformers itself).
    ours = json.loads((out / "config.json").read_text())
    with open(os.path.join(fixture_dir(family), "config.json")) as f:
        ref = json.load(f)
    for field in ("model_type", "architectures", "hidden_size", "intermediate_size", "ffn_dim",
                  "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "vocab_size", "tie_word_embeddings", "rope_parameters",
                  "rms_norm_eps", "layer_norm_eps", "sliding_window", "word_embed_proj_dim",
                  "do_layer_norm_before", "max_position_embeddings", "hidden_act",
                  "activation_function", "attention_bias"):
        if field in ref:
            assert ours.get(field) == ref[field], field
    reloaded = from_pretrained(str(out))
    g = golden(f"{family}_golden")
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    np.testing.assert_array_equal(np.asarray(reloaded(ids, mask)), np.asarray(model(ids, mask)))


@pytest.mark.parametrize("family", ["llama", "opt", "bert"])
def test_reward_model_round_trip(family, tmp_path):
    rm = reward_model_from_pretrained(fixture_dir(f"{family}_rm"))
    save_pretrained(rm, tmp_path / "rm")
    cfg = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert cfg["architectures"][0].endswith("ForSequenceClassification") and cfg["num_labels"] == 1
    back = reward_model_from_pretrained(str(tmp_path / "rm"))
    g = golden(f"{family}_rm_golden")
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    np.testing.assert_allclose(np.asarray(back(ids, mask)), g["rewards"], atol=1e-4)


def test_sharded_safetensors_index(tmp_path):
    src = fixture_dir("llama")
    tensors = load_file(os.path.join(src, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for fn, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(tmp_path / fn), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: fn for fn, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    g = golden("llama_golden")
    out = np.asarray(from_pretrained(str(tmp_path))(jnp.asarray(g["input_ids"]),
                                                     jnp.asarray(g["attention_mask"])))
    real = g["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[real], g["logits"][real], atol=1e-4)


def test_save_hf_splits_into_size_sharded_files_with_an_index(tmp_path):
    from transformers.utils.hub import get_checkpoint_shard_files

    from cwpo_jax.models.checkpoint_hf import save_hf

    model = from_pretrained(fixture_dir("llama"))
    whole = load_file(os.path.join(fixture_dir("llama"), "model.safetensors"))
    limit = sum(v.nbytes for v in whole.values()) // 3
    save_pretrained(model, tmp_path)  # a stale single file, replaced by the sharded layout
    save_hf(model, str(tmp_path), max_shard_size=limit)
    files = sorted(n for n in os.listdir(tmp_path) if n.endswith(".safetensors"))
    n = len(files)
    assert n >= 3 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    # transformers' own reader of the index (the one its from_pretrained calls)
    paths, meta = get_checkpoint_shard_files(str(tmp_path),
                                             str(tmp_path / "model.safetensors.index.json"))
    assert sorted(map(os.path.basename, paths)) == files
    assert set(meta["all_checkpoint_keys"]) == set(whole) - {"embeddings.position_ids"}
    sizes = []
    for p in paths:
        shard = load_file(p)
        assert all(meta["weight_map"][k] == os.path.basename(p) for k in shard)
        sizes.append(sum(v.nbytes for v in shard.values()))
        assert len(shard) == 1 or sizes[-1] <= limit
    assert meta["total_size"] == sum(sizes)
    g = golden("llama_golden")
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    np.testing.assert_array_equal(np.asarray(from_pretrained(str(tmp_path))(ids, mask)),
                                  np.asarray(model(ids, mask)))


def _copy(tmp_path, name="llama"):
    d = tmp_path / name
    shutil.copytree(fixture_dir(name), d)
    return d


def test_mismatched_shape_names_the_parameter(tmp_path):
    d = _copy(tmp_path)
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.1.self_attn.k_proj.weight"] = t["model.layers.1.self_attn.k_proj.weight"][:8]
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        from_pretrained(str(d))


def test_missing_tensor_names_the_parameter(tmp_path):
    d = _copy(tmp_path)
    t = load_file(str(d / "model.safetensors"))
    del t["model.layers.0.mlp.up_proj.weight"]
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(KeyError, match=r"model\.layers\.0\.mlp\.up_proj\.weight"):
        from_pretrained(str(d))


def test_unknown_architecture_is_a_clear_error(tmp_path):
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type='mamba'"):
        from_pretrained(str(d))


def test_unsupported_rope_type_is_a_clear_error(tmp_path):
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"]["rope_type"] = "yarn"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="yarn"):
        from_pretrained(str(d))


def test_missing_path_without_hub_fails_loudly(tmp_path):
    with pytest.raises(FileNotFoundError):
        from_pretrained(str(tmp_path / "nothing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(str(tmp_path / "empty"))
    # A local-looking path never goes to the hub (whose error would be about repo ids).
    for missing in (str(tmp_path / "gone"), "./gone", "runs/a/model"):
        with pytest.raises(FileNotFoundError, match="model directory not found: " + missing):
            from_pretrained(missing)


def test_hub_id_goes_through_snapshot_download(monkeypatch):
    # No hub here: stand in for the download and check the id and file patterns it gets.
    import huggingface_hub

    calls = {}

    def fake_download(repo_id, allow_patterns):
        calls["repo_id"], calls["patterns"] = repo_id, allow_patterns
        return fixture_dir("qwen2")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = from_pretrained("Qwen/Qwen2.5-0.5B")
    assert calls["repo_id"] == "Qwen/Qwen2.5-0.5B"
    assert "*.safetensors" in calls["patterns"] and "*.json" in calls["patterns"]
    assert model.config.model_type == "qwen2"


def test_models_package_never_imports_torch():
    import subprocess
    import sys

    code = (f"import sys, cwpo_jax.models as m; m.from_pretrained({fixture_dir('opt')!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.mark.parametrize("family", ["opt", "bert", "llama"])
def test_transformers_flax_msgpack_weights(family, tmp_path):
    # Write the fixture the way transformers' Flax classes stored weights (nested dict, Dense
    # kernels [in, out], `embedding` / LayerNorm `scale` names) and load it without safetensors.
    from flax import serialization
    from flax.traverse_util import unflatten_dict

    tensors = load_file(os.path.join(fixture_dir(family), "model.safetensors"))
    flat = {}
    for name, value in tensors.items():
        *mods, leaf = name.split(".")
        if leaf == "weight" and value.ndim == 2:
            emb = mods[-1].endswith("embeddings") or mods[-1].startswith("embed")
            value, leaf = (value, "embedding") if emb else (value.T, "kernel")
        elif leaf == "weight" and ("LayerNorm" in mods[-1] or "layer_norm" in mods[-1]):
            leaf = "scale"
        flat[(*mods, leaf)] = value
    d = tmp_path / family
    d.mkdir()
    (d / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(unflatten_dict(flat)))
    shutil.copy(os.path.join(fixture_dir(family), "config.json"), d / "config.json")
    g = golden(f"{family}_golden")
    ids, mask = jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])
    out = np.asarray(from_pretrained(str(d))(ids, mask))
    ref = g["hidden"] if family == "bert" else g["logits"]
    real = g["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[real], ref[real], atol=1e-4)


def test_bert_without_pooler_loads(tmp_path):
    d = _copy(tmp_path, "bert")
    t = load_file(str(d / "model.safetensors"))
    for k in [k for k in t if k.startswith("pooler.")]:
        del t[k]
    save_file(t, str(d / "model.safetensors"))
    model = from_pretrained(str(d))
    assert model.pooler is None
    g = golden("bert_golden")
    out = np.asarray(model.pooled(jnp.asarray(g["input_ids"]), jnp.asarray(g["attention_mask"])))
    np.testing.assert_allclose(out, g["mean_pooled"], atol=1e-4)
