"""scripts/frontier.py: the points of the preset, the cost, and the matched-KL summary of
finished run folders against a hand computation."""
import importlib.util
import json
import os
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "frontier_script", os.path.join(ROOT, "scripts", "frontier.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _samples(folder, name, gold, degenerate=None):
    os.makedirs(os.path.join(folder, "eval"), exist_ok=True)
    with open(os.path.join(folder, "eval", f"samples_{name}.jsonl"), "w") as f:
        for i, g in enumerate(gold):
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"p{i}"}], "sample": 0,
                                "response": f"{name} {i}", "gold": g,
                                "degenerate": bool(degenerate and degenerate[i])}) + "\n")


def test_preset_points_and_cost():
    script = _script()
    preset = script.load_preset()
    plan = script.folders(preset, "/tmp/frontier")
    assert len(preset.SEEDS) >= 3 and {f["seed"] for f in plan} == set(preset.SEEDS)
    # gold, human and weak_confidence across the frontier: four rates each, in every seed
    for m in ("gold", "human", "weak_confidence"):
        assert len(preset.LEARNING_RATES[m]) == 4
    est = script.cost(preset, plan)
    assert est["points"] == len(preset.SEEDS) * sum(map(len, preset.LEARNING_RATES.values()))
    assert 3.0 <= est["hours"] <= 5.0  # docs/experiments.md: the budget of the frontier
    cfg = script.point_config(preset, plan[1])
    assert cfg.align.train.learning_rate == plan[1]["lr"] and cfg.seed == plan[1]["seed"]
    assert cfg.evaluate.samples_per_prompt == 4 and cfg.output_dir == plan[1]["dir"]
    from cwpo_jax.stages.config import validate

    for folder in plan:
        validate(script.point_config(preset, folder), num_devices=1)


def test_matched_kl_summary_against_hand_computation(tmp_path):
    script = _script()
    preset = types.SimpleNamespace(SEEDS=(0, 1), LEARNING_RATES={
        "weak_confidence": (1e-3, 2e-3), "human": (3e-3, 4e-3)})
    plan = script.folders(preset, str(tmp_path))
    # Reference 0.5 on 4 prompts. weak_confidence: KL 1 wins 1,0,0,1 (GRA 0.5), KL 3 wins
    # 1,1,1,0 (0.75); human: KL 2 wins 0,0,1,0 (0.25), KL 4 wins 1,0,1,1 (0.75). On the shared
    # range [2, 3] the curves average 0.6875 and 0.375: difference 0.3125. Gated: the KL-3
    # point's first sample is degenerate (wins 0,1,1,0: 0.5), so weak_confidence is 0.5 on the
    # whole range: difference 0.125.
    values = {1e-3: ("weak_confidence", 1.0, [0.9, 0.1, 0.1, 0.9], None),
              2e-3: ("weak_confidence", 3.0, [0.9, 0.9, 0.9, 0.1], [True, False, False, False]),
              3e-3: ("human", 2.0, [0.1, 0.1, 0.9, 0.1], None),
              4e-3: ("human", 4.0, [0.9, 0.1, 0.9, 0.9], None)}
    for folder in plan:
        method, kl, gold, flags = values[folder["lr"]]
        _samples(folder["dir"], "reference", [0.5] * 4)
        _samples(folder["dir"], method, gold, flags)
        with open(os.path.join(folder["dir"], "results.json"), "w") as f:
            json.dump({"methods": {method: {"kl_estimate": kl,
                                            "degeneration": {"degenerate_share": 0.0}}}}, f)
    summary = script.summarise(preset, plan, str(tmp_path))
    c = summary["comparisons"]["weak_confidence-human"]
    for kind, want in (("raw", 0.3125), ("gated", 0.125)):
        assert [s["diff"] for s in c[kind]["per_seed"]] == pytest.approx([want, want])
        assert c[kind]["per_seed"][0]["kl_range"] == [2.0, 3.0]
        over = c[kind]["over_seeds"]
        assert over["mean"] == pytest.approx(want) and over["groups"] == 2
        assert over["ci_low"] <= want <= over["ci_high"]
    # degenerate share: weak_confidence 0 at KL 1 and 1/4 at KL 3 -> 3/16 on [2, 3]; human 0
    degenerate = c["degenerate_share"]["over_seeds"]
    assert degenerate["mean"] == pytest.approx(3 / 16)
    assert summary["comparisons"]["gold-human"]["raw"]["over_seeds"] is None
    assert os.path.exists(tmp_path / "frontier.png") and os.path.exists(tmp_path / "frontier.md")
    # a folder of a seed whose reference samples differ is refused
    _samples(plan[1]["dir"], "reference", [0.4] * 4)
    with pytest.raises(SystemExit, match="not paired"):
        script.summarise(preset, plan, str(tmp_path))


def test_other_folders_of_a_seed_link_the_first_folders_stages(tmp_path):
    script = _script()
    preset = types.SimpleNamespace(SEEDS=(0,), LEARNING_RATES={"gold": (1e-3, 2e-3)})
    first, second = script.folders(preset, str(tmp_path))
    with pytest.raises(SystemExit, match="has not run"):
        script.link_shared(second)
    for name in script.LINKED:
        os.makedirs(os.path.join(first["dir"], name))
    script.link_shared(second)
    script.link_shared(second)  # again: the links stay
    for name in script.LINKED:
        assert os.path.realpath(os.path.join(second["dir"], name)) == os.path.join(
            first["dir"], name)
    assert np.all([os.path.islink(os.path.join(second["dir"], n)) for n in script.LINKED])
