"""The score, generate and compare_trl benchmarks run end to end on tiny models and report sane
figures."""
import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import compare_trl
import generate
import score


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_score_benchmark_tiny(capsys):
    result = score.main(["--models=tiny,tiny-llama", "--pairs=24", "--batch=4", "--length=128",
                         "--no-torch"])
    assert last_json(capsys) == json.loads(json.dumps(result))
    assert result["torch_skipped"] and result["jax_over_torch"] == {}
    rows = {(r["model"], r["workload"], r["layout"]): r for r in result["rows"]}
    assert set(rows) == {(m, w, lay) for m in ("tiny", "tiny-llama")
                         for w in ("equal", "variable") for lay in ("padded", "packed")}
    for r in rows.values():
        assert r["backend"] == "jax" and r["pairs"] == 24
        assert r["pairs_per_s"] > 0 and r["first_pass_s"] > 0 and r["pass_s"] > 0
        # Both sequences of every pair are counted, so tokens/pair is their real length.
        assert r["tokens_per_s"] / r["pairs_per_s"] <= 2 * 128
    for layout in ("padded", "packed"):
        equal = rows[("tiny", "equal", layout)]
        assert equal["tokens_per_s"] == pytest.approx(2 * 128 * equal["pairs_per_s"])
        assert equal["padded_share"] == 0.0
    # Packing leaves only row tails and the last batch's empty rows: less padding than buckets.
    padded, packed = rows[("tiny", "variable", "padded")], rows[("tiny", "variable", "packed")]
    assert 0.0 <= packed["padded_share"] < padded["padded_share"] < 1.0


def test_score_variable_lengths_fit_the_buckets():
    pairs = score.make_pairs("variable", 200, 64, 512)
    lengths = np.asarray([p.length for p in pairs])
    assert lengths.max() <= 64 and lengths.min() >= 3
    assert len(set(lengths.tolist())) > 10  # really variable


def test_score_torch_column_tiny(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    result = score.main(["--models=tiny", "--pairs=8", "--batch=4", "--length=16"])
    torch_rows = [r for r in result["rows"] if r["backend"] == "torch"]
    assert [r["workload"] for r in torch_rows] == ["equal", "variable"]
    assert all(r["pairs_per_s"] > 0 and r["layout"] == "dynamic" for r in torch_rows)
    assert torch_rows[0]["padded_share"] == 0.0
    assert set(result["jax_over_torch"]) == {f"tiny/{w}/{lay}" for w in ("equal", "variable")
                                             for lay in ("padded", "packed")}
    assert all(r > 0 and math.isfinite(r) for r in result["jax_over_torch"].values())


def test_generate_benchmark_tiny(capsys):
    result = generate.main(["--models=tiny", "--batch-sizes=1,4", "--prompt-len=8",
                            "--new-tokens=6", "--repeats=2"])
    assert last_json(capsys) == json.loads(json.dumps(result))
    assert [r["batch"] for r in result["rows"]] == [1, 4]
    for r in result["rows"]:
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 6 / r["step_s"])
        assert r["ms_per_decode_step"] == pytest.approx(1e3 * r["step_s"] / 6)
        assert r["first_call_s"] >= r["compile_s"] >= 0
        assert r["step_s"] > 0


def test_compare_trl_tiny_export_matches_the_jax_batch(tmp_path):
    """The JAX side's plumbing: the tiny model the TRL side loads is written with
    save_pretrained, and the ids handed over are dpo_step's."""
    import dpo_step

    folder = compare_trl.export("tiny", str(tmp_path / "model"))
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "llama" and config["vocab_size"] == 512
    host, tokens = dpo_step.make_batch(2, 8, 8, config["vocab_size"])
    assert host["input_ids"].shape == (4, 16) and tokens == 64
    # chosen and rejected of a pair share the prompt, as the TRL dataset rows assume
    np.testing.assert_array_equal(host["input_ids"][:2, :8], host["input_ids"][2:, :8])


@pytest.mark.parametrize("reference,layout", [("cached", "packed"), ("online", "rows")])
def test_compare_trl_tiny(capsys, reference, layout):
    pytest.importorskip("trl")
    result = compare_trl.main(["--model=tiny", "--batch=2", "--prompt-len=8",
                               "--completion-len=8", "--steps=2", f"--reference={reference}",
                               f"--layout={layout}"])
    assert last_json(capsys) == json.loads(json.dumps(result))
    assert result["tokens_per_step"] == 2 * 2 * 16
    for side in ("jax", "trl"):
        r = result[side]
        assert r["step_s"] > 0 and r["peak_rss_mb"] > 100
        assert r["tokens_per_s"] == pytest.approx(64 / r["step_s"])
        assert r["mfu_6n"] > 0
    assert 0 < result["trl"]["mfu_6n"] < 1 and 0 < result["jax"]["mfu"] < 1
    assert result["layout"] == layout
    assert result["trl"]["steps_timed"] == 2
    # Untrained policy == reference: the DPO loss starts at ln 2 (TRL's mean over 3 steps at
    # lr 1e-6 barely moves).
    if reference == "online":
        assert result["trl"]["mean_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert result["ratio"] == pytest.approx(result["jax"]["tokens_per_s"]
                                            / result["trl"]["tokens_per_s"])
    assert result["memory_ratio"] == pytest.approx(result["jax"]["peak_rss_mb"]
                                                   / result["trl"]["peak_rss_mb"])
    # Steady-state step peaks, measured the same way on both sides (None only without
    # a writable /proc/self/clear_refs).
    if result["step_memory_ratio"] is not None:
        for side in ("jax", "trl"):
            r = result[side]
            assert 0 < r["resident_before_steps_mb"] <= r["step_peak_rss_mb"] <= r["peak_rss_mb"]
        assert result["step_memory_ratio"] == pytest.approx(
            result["jax"]["step_peak_rss_mb"] / result["trl"]["step_peak_rss_mb"])


def test_scale_prepare_runs_every_stage_on_a_small_file(capsys, tmp_path):
    import scale_prepare

    result = scale_prepare.main(["--pairs=120", f"--workdir={tmp_path}", "--score-batch=8"])
    assert last_json(capsys) == json.loads(json.dumps(result))
    assert result["generate"]["pairs"] == result["read"]["pairs"] == 120
    assert result["prepare"]["pairs"] == 120  # every pair lands in one split
    unlabelled = result["tokenise"]["pairs"]
    assert 0 < unlabelled < 120 and result["score"]["pairs"] == unlabelled
    for stage in ("generate", "read", "prepare", "tokenise", "score"):
        assert result[stage]["pairs_per_s"] > 0 and result[stage]["seconds"] >= 0  # 0.0: rounded
