"""scripts/paired_runs.py: paired GRA differences across run folders that share prompts."""
import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "paired_runs", os.path.join(ROOT, "scripts", "paired_runs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(run, name, gold, responses=None, degenerate=None):
    os.makedirs(os.path.join(run, "eval"), exist_ok=True)
    with open(os.path.join(run, "eval", f"samples_{name}.jsonl"), "w") as f:
        for i, g in enumerate(gold):
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"p{i}"}], "sample": 0,
                                "response": (responses or [f"r{i}"] * len(gold))[i],
                                "gold": g,
                                "degenerate": bool(degenerate and degenerate[i])}) + "\n")


def test_paired_difference_across_runs(tmp_path):
    ref = [0.5, 0.5, 0.5, 0.5]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _write(a, "reference", ref)
    _write(b, "reference", ref)
    _write(a, "wc", [0.9, 0.9, 0.1, 0.5])   # wins 1, 1, 0, tie -> 0.625
    _write(b, "wc", [0.1, 0.9, 0.1, 0.1])   # wins 0, 1, 0, 0   -> 0.25
    out = _script().compare(f"{a}:wc", f"{b}:wc", resamples=500)
    assert out["gra_a"] == pytest.approx(0.625) and out["gra_b"] == pytest.approx(0.25)
    assert out["diff"] == pytest.approx(np.mean([1 - 0, 1 - 1, 0 - 0, 0.5 - 0])) and out["n"] == 4
    assert out["ci_low"] <= out["diff"] <= out["ci_high"]


def test_runs_with_other_reference_samples_are_refused(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _write(a, "reference", [0.5, 0.5])
    _write(b, "reference", [0.5, 0.5], responses=["x", "y"])  # other reference responses
    _write(a, "wc", [0.9, 0.1])
    _write(b, "wc", [0.9, 0.1])
    with pytest.raises(SystemExit, match="do not share prompts and reference samples"):
        _script().compare(f"{a}:wc", f"{b}:wc", resamples=100)


def test_gated_comparison_counts_degenerate_samples_as_the_worst(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for run in (a, b):
        _write(run, "reference", [0.5, 0.5, 0.5], degenerate=[False, False, True])
    _write(a, "wc", [0.9, 0.9, 0.1], degenerate=[True, False, False])  # gated wins 0, 1, 1
    _write(b, "wc", [0.1, 0.1, 0.1])                                    # gated wins 0, 0, 1
    raw = _script().compare(f"{a}:wc", f"{b}:wc", resamples=200)
    gated = _script().compare(f"{a}:wc", f"{b}:wc", resamples=200, gated=True)
    assert raw["gra_a"] == pytest.approx(2 / 3) and gated["gra_a"] == pytest.approx(2 / 3)
    assert raw["gra_b"] == pytest.approx(0.0) and gated["gra_b"] == pytest.approx(1 / 3)
    assert gated["diff"] == pytest.approx(1 / 3)
