"""Sweeps (sweep.runs): one full tiny pipeline per (labelled_fraction, seed) on a shared pool,
the aggregated results, resuming, and k samples per evaluation prompt end to end."""
import json
import os
import re
import sys

import numpy as np
import pytest

from cwpo_jax.stages import config as config_lib
from cwpo_jax.stages import evaluate, pipeline, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = ((0.3, 0), (0.3, 1))


def tiny_config(output_dir):
    sys.path.insert(0, ROOT)
    from configs import tiny

    cfg = tiny.get_config()
    cfg.output_dir = str(output_dir)
    cfg.align.methods = ("human", "weak_confidence")
    cfg.evaluate.samples_per_prompt = 2
    cfg.sweep.runs = RUNS
    return cfg


def read_json(*parts):
    with open(os.path.join(*parts)) as f:
        return json.load(f)


def read_jsonl(*parts):
    with open(os.path.join(*parts)) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("sweep"))
    config_lib.validate(cfg, num_devices=8)
    return cfg, pipeline.run(cfg)


def test_each_run_is_a_normal_run_folder_on_one_pool(tiny_sweep):
    cfg, _ = tiny_sweep
    ids, labelled = [], []
    for fraction, seed in RUNS:
        run_dir = os.path.join(cfg.output_dir, f"frac{fraction:g}_seed{seed}")
        saved = read_json(run_dir, "results.json")
        assert saved["config"]["seed"] == seed and saved["config"]["sweep"]["runs"] == []
        assert saved["config"]["data"]["pool_seed"] == cfg.seed
        splits = {s: read_jsonl(run_dir, "data", f"{s}.jsonl")
                  for s in ("labelled", "unlabelled", "eval")}
        ids.append(sorted(p["id"] for rows in splits.values() for p in rows))
        labelled.append({p["id"] for p in splits["labelled"]})
    assert ids[0] == ids[1]  # the same pool of pairs ...
    assert labelled[0] != labelled[1]  # ... split differently by each run's seed


def test_aggregate_holds_means_and_sds_of_the_runs(tiny_sweep):
    cfg, returned = tiny_sweep
    saved = read_json(cfg.output_dir, "results.json")
    assert saved == json.loads(json.dumps(returned))
    runs = [read_json(cfg.output_dir, f"frac{f:g}_seed{s}", "results.json") for f, s in RUNS]
    assert set(saved["methods"]) == set(cfg.align.methods)
    for name, m in saved["methods"].items():
        gra = [r["methods"][name]["gra"] for r in runs]
        assert m["gra"] == pytest.approx(np.mean(gra))
        assert m["sd"] == pytest.approx(np.std(gra, ddof=1))
        assert m["ci_low"] <= m["gra"] <= m["ci_high"] and m["seeds"] == 2
        assert [r["gra"] for r in m["runs"]] == gra
        gated = [r["methods"][name]["gated_gra"] for r in runs]  # degenerate = worst sample
        assert m["gated_gra"] == pytest.approx(np.mean(gated))
        assert m["gated_sd"] == pytest.approx(np.std(gated, ddof=1))
        assert m["gated_ci_low"] <= m["gated_gra"] <= m["gated_ci_high"]
    assert saved["differences_gated"]
    for key, d in saved["differences_gated"].items():
        a, b = key.split("-")
        per_seed = [r["methods"][a]["gated_gra"] - r["methods"][b]["gated_gra"] for r in runs]
        assert d["per_seed"] == pytest.approx(per_seed)
        assert d["diff"] == pytest.approx(np.mean(per_seed))
    for key in ("accuracy_vs_human", "accuracy_vs_gold"):
        assert saved["annotator"][key] == pytest.approx(
            np.mean([r["annotator"][key] for r in runs]))
    assert saved["config"]["sweep"]["runs"] == [list(r) for r in RUNS]
    assert [(r["labelled_fraction"], r["seed"]) for r in saved["sweep"]["runs"]] == list(RUNS)
    with open(os.path.join(cfg.output_dir, "results.md")) as f:
        table = f.read()
    assert "| method | 30% labels |" in table  # methods as rows, fractions as columns
    assert f"| human | {100 * saved['methods']['human']['gra']:.1f} ± " in table
    assert f"| human, gated (mean) | {100 * saved['methods']['human']['gated_gra']:.1f} |" in table
    assert "The same, gated" in table
    for name, m in [*saved["methods"].items(), ("reference", saved["reference"])]:
        per_run = [(r["methods"][name] if name != "reference" else r["reference"])["degeneration"]
                   for r in runs]
        for key in ("nll", "distinct_1", "repeat_rate", "nonword_share", "degenerate_share"):
            assert m["degeneration"][key] == pytest.approx(np.mean([d[key] for d in per_run]))
    assert "Degeneration of the evaluation samples, 30% labels, 2 seed(s)" in table
    share = saved["methods"]["human"]["degeneration"]["degenerate_share"]
    assert re.search(rf"\| human \|.*\| {100 * share:.1f} \|", table)
    assert os.path.exists(os.path.join(cfg.output_dir, "plots", "gra.png"))


def test_k_samples_per_prompt_give_gra_over_all_comparisons(tiny_sweep):
    cfg, _ = tiny_sweep
    run_dir = os.path.join(cfg.output_dir, "frac0.3_seed0")
    saved = read_json(run_dir, "results.json")
    ref = read_jsonl(run_dir, "eval", "samples_reference.jsonl")
    prompts = saved["reference"]["prompts"]
    assert [r["sample"] for r in ref] == [0, 1] * prompts
    ref_gold = np.reshape([r["gold"] for r in ref], (prompts, 2))
    for name in cfg.align.methods:
        rows = read_jsonl(run_dir, "eval", f"samples_{name}.jsonl")
        assert [r["prompt"] for r in rows] == [r["prompt"] for r in ref]
        gold = np.reshape([r["gold"] for r in rows], (prompts, 2))
        wins = [[1.0 if a > b else 0.0 if a < b else 0.5 for a in gold[i] for b in ref_gold[i]]
                for i in range(prompts)]
        assert saved["methods"][name]["gra"] == pytest.approx(np.mean(wins))
        assert saved["methods"][name]["n"] == prompts


def test_rerun_skips_every_stage_of_every_run(tiny_sweep, capfd):
    cfg, returned = tiny_sweep
    capfd.readouterr()
    again = pipeline.run(cfg)
    err = capfd.readouterr().err
    assert err.count("results exist for these settings; skipping") == len(RUNS)
    assert err.count("splits exist; skipping") == len(RUNS)
    assert "sampled" not in err and "reference log-probs: computing" not in err
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(returned))
    # a changed evaluation setting evaluates again
    run_cfg = config_lib.sweep_run_config(cfg, *RUNS[0])
    run_cfg.evaluate.bootstrap = 100
    evaluate.run(run_cfg)
    assert "sampled" in capfd.readouterr().err


def run_results(gra_by_method, annotator_acc, ci=(0.1, 0.9)):
    return {"methods": {n: {"gra": g, "ci_low": ci[0], "ci_high": ci[1], "mean_gold": 0.0,
                            "pairs": 10, "n": 20} for n, g in gra_by_method.items()},
            "annotator": {"accuracy_vs_human": annotator_acc, "accuracy_vs_gold": annotator_acc},
            "reference": {"mean_gold": 0.0, "prompts": 20, "samples_per_prompt": 4},
            "gold_judge": "vader"}


def test_aggregate_groups_by_fraction_and_keeps_one_seed_bootstrap():
    runs = [(0.3, 0, run_results({"a": 0.4, "b": 0.6}, 0.6)),
            (0.3, 1, run_results({"a": 0.5, "b": 0.7}, 0.7)),
            (0.2, 0, run_results({"a": 0.45, "b": 0.55}, 0.5, ci=(0.3, 0.62))),
            (0.3, 2, run_results({"a": 0.6, "b": 0.8}, 0.8))]
    out = sweep.aggregate(runs, {"seed": 0})
    assert out["labelled_fraction"] == 0.3
    assert out["methods"]["a"]["gra"] == pytest.approx(0.5)
    assert out["methods"]["a"]["sd"] == pytest.approx(0.1)
    assert out["methods"]["b"]["ci_high"] == pytest.approx(0.7 + 4.302653 * 0.1 / np.sqrt(3))
    assert out["annotator"]["accuracy_vs_gold"] == pytest.approx(0.7)
    low = out["sweep"]["fractions"][1]
    assert low["labelled_fraction"] == 0.2 and low["seeds"] == [0]
    assert low["methods"]["a"]["sd"] is None
    assert (low["methods"]["a"]["ci_low"], low["methods"]["a"]["ci_high"]) == (0.3, 0.62)
    # runs without gated GRA (results of earlier code) aggregate without it
    assert "gated_gra" not in out["methods"]["a"] and out["differences_gated"] == {}
    assert "degeneration" not in out["methods"]["a"] and "degeneration" not in out["reference"]
    table = sweep.markdown({**out, "config": {"sft": {"model": "s"}, "annotator": {"model": "w"},
                                              "align": {"loss": "dpo", "beta": 0.5}}})
    assert "| a | 50.0 ± 10.0 (3 seeds) | 45.0 (1 seed) |" in table


@pytest.mark.parametrize("runs, line", [
    (((0.3, 0), (0.3, 0)), "sweep.runs[1]: (0.3, 0) is listed twice"),
    (((0.3, -1),), "sweep.runs[0]: (0.3, -1) is not a (labelled_fraction, seed >= 0) pair"),
    (((0.3,),), "sweep.runs[0]: (0.3,) is not a (labelled_fraction, seed >= 0) pair"),
    (((0.95, 0),), "sweep.runs[0] (0.95, 0): data.eval_fraction: 0.15 must be in (0, 1)"),
])
def test_bad_sweep_entries_are_refused_naming_the_entry(runs, line):
    cfg = tiny_config("/tmp/unused")
    cfg.sweep.runs = runs
    with pytest.raises(config_lib.ConfigError, match=re.escape(line)):
        config_lib.validate(cfg, num_devices=8)
