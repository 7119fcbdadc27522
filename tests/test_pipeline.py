"""The tiny pipeline end to end (every stage, every method), reruns, caches and refusals."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cwpo_jax import scores
from cwpo_jax.stages import align, config as config_lib, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(output_dir, **overrides):
    sys.path.insert(0, ROOT)
    from configs import tiny

    cfg = tiny.get_config()
    cfg.output_dir = str(output_dir)
    for key, value in overrides.items():
        section, field = key.split(".")
        cfg[section][field] = value
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    cfg = tiny_config(out)
    config_lib.validate(cfg, num_devices=8)
    results = pipeline.run(cfg)
    return cfg, results


def test_results_cover_every_method_with_intervals(tiny_run):
    cfg, results = tiny_run
    with open(os.path.join(cfg.output_dir, "results.json")) as f:
        saved = json.load(f)
    assert set(saved["methods"]) == set(cfg.align.methods)
    for m in saved["methods"].values():
        assert 0.0 <= m["ci_low"] <= m["gra"] <= m["ci_high"] <= 1.0
        assert m["n"] == saved["reference"]["prompts"] > 0
    a = saved["annotator"]
    for key in ("accuracy_vs_human", "accuracy_vs_gold", "ece_vs_human", "calibration_vs_human",
                "heldout_accuracy_vs_human"):
        assert key in a
    assert 0.5 < saved["data"]["rater_gold_agreement"] < 1.0
    assert os.path.exists(os.path.join(cfg.output_dir, "results.md"))
    # the top-fraction method trains on ceil(0.3 * unlabelled) pairs only
    n_unlabelled = saved["data"]["sizes"]["unlabelled"]
    assert saved["methods"]["top_fraction"]["pairs"] == int(np.ceil(0.3 * n_unlabelled - 1e-9))
    assert saved["methods"]["human_all"]["pairs"] == n_unlabelled + saved["data"]["sizes"]["labelled"]


def test_gold_method_label_quality_and_differences(tiny_run):
    cfg, _ = tiny_run
    with open(os.path.join(cfg.output_dir, "results.json")) as f:
        saved = json.load(f)
    gold = _gold_scores(cfg)
    unlabelled = [json.loads(line)["id"] for line in
                  open(os.path.join(cfg.output_dir, "data", "unlabelled.jsonl"))]
    decided = sum(gold[i][0] != gold[i][1] for i in unlabelled)
    quality = saved["label_quality"]
    assert set(quality) == set(cfg.align.methods)
    # gold: every gold-decided unlabelled pair, all in the gold order, no weight on ties
    assert saved["methods"]["gold"]["pairs"] == quality["gold"]["pairs"] == decided
    assert quality["gold"]["gold_accuracy"] == quality["gold"]["weighted_gold_accuracy"] == 1.0
    assert quality["gold"]["tie_weight_share"] == 0.0
    human_vs_gold = saved["annotator"]["human_vs_gold"]
    assert quality["human"]["gold_accuracy"] == pytest.approx(human_vs_gold)
    assert quality["weak"]["gold_accuracy"] == pytest.approx(saved["annotator"]["accuracy_vs_gold"])
    assert set(saved["differences"]) == {"weak_confidence-human", "weak_confidence-weak",
                                         "top_fraction-weak", "human_all-human", "gold-human",
                                         "weak_confidence-gold_weighted",
                                         "top_fraction-gold_top_fraction"}
    for name, d in saved["differences"].items():
        a, b = name.split("-")
        assert d["diff"] == pytest.approx(saved["methods"][a]["gra"] - saved["methods"][b]["gra"])
        assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    for m in saved["methods"].values():
        assert np.isfinite(m["final_loss"]) and np.isfinite(m["kl_estimate"])
        assert 0.0 <= m["heldout_gold_accuracy"] <= 1.0 and m["heldout_pairs"] > 0
    a = saved["annotator"]
    assert -1.0 <= a["gold_gap_correlation"] <= 1.0
    assert 0.0 <= a["top_fraction_gold_accuracy"] <= 1.0
    assert sum(r["count"] for r in a["accuracy_by_decile_vs_gold"]) == a["gold_decided_pairs"]
    text = open(os.path.join(cfg.output_dir, "results.md")).read()
    assert "Paired differences" in text and "Label quality by gold" in text
    assert os.path.exists(os.path.join(cfg.output_dir, "plots", "gold_deciles.png"))


def test_degeneration_metrics_gated_gra_and_oracles_in_results(tiny_run):
    cfg, _ = tiny_run
    with open(os.path.join(cfg.output_dir, "results.json")) as f:
        saved = json.load(f)
    keys = {"nll", "distinct_1", "distinct_2", "repeat_rate", "nonword_share", "length",
            "positive_density", "degenerate_share"}
    for name, m in saved["methods"].items():
        assert 0.0 <= m["gated_ci_low"] <= m["gated_gra"] <= m["gated_ci_high"] <= 1.0
        assert set(m["degeneration"]) == keys and m["kl_samples"] > 0
        with open(os.path.join(cfg.output_dir, "align", name, "metrics.jsonl")) as f:
            last = [json.loads(line) for line in f][-1]
        # final_loss is sum(w l) / sum(w); beside it what was minimised and the accuracy
        assert m["final_loss"] == last["loss/normalized"] and m["final_objective"] == last["loss"]
        assert m["final_weighted_accuracy"] == last["rewards/weighted_accuracies"]
    assert set(saved["reference"]["degeneration"]) == keys
    gate = saved["degeneration_gate"]
    assert set(gate["thresholds"]) == {"nll", "repeat_rate", "nonword_share", "length"}
    assert gate["vocabulary_words"] > 0 and gate["positive_words"] > 0
    assert set(saved["differences_gated"]) == set(saved["differences"])
    with open(os.path.join(cfg.output_dir, "eval", "samples_reference.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert all(isinstance(r["degenerate"], bool) and "nll" in r for r in rows)
    # The gate was fixed on these reference samples: at most 1% of them beyond each threshold.
    assert sum(r["degenerate"] for r in rows) <= 4 * np.ceil(0.01 * len(rows))
    text = open(os.path.join(cfg.output_dir, "results.md")).read()
    assert "gated GRA" in text and "Degeneration of the evaluation samples" in text
    # The bounding oracles: gold labels only, weights from the gold gap / the largest gaps.
    quality = saved["label_quality"]
    assert quality["gold_weighted"]["pairs"] == quality["gold"]["pairs"]
    assert quality["gold_weighted"]["weighted_gold_accuracy"] == 1.0
    assert 0.0 < saved["methods"]["gold_weighted"]["mean_weight"] < 1.0
    n_unlabelled = saved["data"]["sizes"]["unlabelled"]
    assert 0 < quality["gold_top_fraction"]["pairs"] <= int(np.ceil(0.3 * n_unlabelled - 1e-9))
    assert quality["gold_top_fraction"]["gold_accuracy"] == 1.0


def _gold_scores(cfg):
    with open(os.path.join(cfg.output_dir, "data", "gold.json")) as f:
        return json.load(f)


def test_metrics_and_checkpoints_written(tiny_run):
    cfg, _ = tiny_run
    for stage in ("annotator", "sft", "align/weak_confidence"):
        with open(os.path.join(cfg.output_dir, stage, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        assert records and all(np.isfinite(r["loss"]) for r in records)
        assert os.listdir(os.path.join(cfg.output_dir, stage, "ckpt"))


def test_confidence_weights_reach_training(tiny_run):
    cfg, _ = tiny_run
    s = scores.read_scores(os.path.join(cfg.output_dir, "score", "scores.jsonl"))
    with open(os.path.join(cfg.output_dir, "align", "weak_confidence", "done.json")) as f:
        done = json.load(f)
    assert done["mean_weight"] == pytest.approx(float(np.mean(s["c1"])), rel=1e-5)


def test_score_summary_c1_is_the_scores_file_c1(tiny_run):
    """The score stage's mean C1 and the scores file's c1 column come from the same
    confidence.confidence call: equal to the last bit."""
    cfg, _ = tiny_run
    s = scores.read_scores(os.path.join(cfg.output_dir, "score", "scores.jsonl"))
    with open(os.path.join(cfg.output_dir, "score", "done.json")) as f:
        done = json.load(f)
    assert done["mean_confidence"] == float(np.mean(s["c1"]))


def test_label_quality_lists_methods_in_the_configured_order(tiny_run):
    cfg, _ = tiny_run
    with open(os.path.join(cfg.output_dir, "align", "label_quality.json")) as f:
        assert list(json.load(f)) == list(cfg.align.methods)


def test_rerun_skips_finished_stages_and_hits_reference_cache(tiny_run, capfd):
    cfg, results = tiny_run
    cache = os.listdir(os.path.join(cfg.output_dir, "refcache"))
    assert len(cache) == 1  # one reference pass served every method
    again = pipeline.run(cfg)
    err = capfd.readouterr().err
    assert "annotator exists; skipping" in err and "policy exists; skipping" in err
    # evaluation is deterministic given the seed
    for name, m in results["methods"].items():
        assert again["methods"][name]["gra"] == m["gra"]


def test_packed_scoring_pass_equals_padded_rows(tiny_run):
    """The score stage packs sequences into rows (the default); padded rows give the same
    scores, and both match what the stage wrote."""
    from cwpo_jax import models
    from cwpo_jax.stages import annotator, common, run_folder

    cfg, _ = tiny_run
    model_dir = os.path.join(cfg.output_dir, "annotator", "model")
    rm, tok = models.reward_model_from_pretrained(model_dir), models.load_tokenizer(model_dir)
    pairs = run_folder.load_split(cfg, "unlabelled")
    tokenized = common.pair_tokenizer(cfg, tok).encode_pairs(pairs)
    packed = annotator.score_pairs(cfg, rm, tokenized, tok, "test")
    padded_cfg = tiny_config(cfg.output_dir, **{"score.packed": False})
    padded = annotator.score_pairs(padded_cfg, rm, tokenized, tok, "test")
    written = scores.read_scores(os.path.join(cfg.output_dir, "score", "scores.jsonl"))
    assert list(written["ids"]) == [p.id for p in pairs]
    for a, b, w in zip(packed, padded, (written["score_a"], written["score_b"])):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, w, rtol=1e-6, atol=1e-6)


def test_scores_for_other_data_are_refused(tiny_run):
    cfg, _ = tiny_run
    pool = [p.id for p in align.run_folder.load_split(cfg, "labelled")]
    pool += [p.id for p in align.run_folder.load_split(cfg, "unlabelled")][:-1] + ["someone-else"]
    with pytest.raises(scores.ScoresError, match="do not match the dataset"):
        align.method_targets(cfg, "weak", pool, len(pool) - 10)


def test_cli_rejects_bad_config_naming_the_field(tmp_path):
    cmd = [sys.executable, "launch/pipeline.py", "--config=configs/tiny.py",
           f"--config.output_dir={tmp_path}", "--config.align.beta=-1",
           "--config.align.label_smoothing=0.7"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "align.beta: must be > 0" in out.stderr
    assert "align.label_smoothing: must be in [0, 0.5)" in out.stderr
    assert not os.listdir(tmp_path)  # refused before any compute


def test_validate_catches_unknown_keys_and_divisibility():
    cfg = tiny_config("/tmp/x")
    cfg.unlock()
    cfg.align.betta = 0.1
    with pytest.raises(config_lib.ConfigError, match="align.betta: unknown"):
        config_lib.validate(cfg)
    cfg = tiny_config("/tmp/x")
    cfg.align.train.batch_size = 6
    cfg.align.train.micro_batches = 1
    with pytest.raises(config_lib.ConfigError, match="align.train.batch_size: micro-batch 6"):
        config_lib.validate(cfg, num_devices=8)
    cfg = tiny_config("/tmp/x")
    cfg.mesh.data, cfg.mesh.tensor = 4, 4
    with pytest.raises(config_lib.ConfigError, match="mesh: 16 devices requested"):
        config_lib.validate(cfg, num_devices=8)


def test_align_from_cached_frozen_layers_equals_running_them(tiny_run, tmp_path, capfd):
    """LoRA in the top layer only: training from the bottom layer's cached output
    (align.frozen_cache_gb > 0) logs the losses of running the whole stack at every step."""
    cfg, _ = tiny_run
    losses = {}
    for gb in (4.0, 0.0):
        out = tmp_path / f"gb{gb}"
        out.mkdir()
        for stage in ("data", "annotator", "score", "sft", "init", "refcache"):
            if os.path.exists(os.path.join(cfg.output_dir, stage)):
                os.symlink(os.path.join(cfg.output_dir, stage), out / stage)
        run_cfg = tiny_config(out, **{"align.lora_rank": 4, "align.lora_layers": (-1,),
                                      "align.frozen_cache_gb": gb})
        run_cfg.align.train.log_every = 1
        align.run_method(run_cfg, "gold")
        with open(out / "align" / "gold" / "metrics.jsonl") as f:
            losses[gb] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert "align/frozen_layers" in capfd.readouterr().err  # the cache was built and used
    assert len(losses[4.0]) > 1
    np.testing.assert_allclose(losses[4.0], losses[0.0], rtol=1e-4)


def test_lora_base_held_in_bfloat16_trains_like_float32(tiny_run, tmp_path):
    """align.train.frozen_dtype=bfloat16: LoRA's frozen base is held in bf16 during training
    (half its memory); the losses follow the float32 run's to bf16 rounding and the exported
    model is float32 again."""
    cfg, _ = tiny_run
    losses = {}
    for dtype in ("bfloat16", "float32"):
        out = tmp_path / dtype
        out.mkdir()
        for stage in ("data", "annotator", "score", "sft", "init", "refcache"):
            if os.path.exists(os.path.join(cfg.output_dir, stage)):
                os.symlink(os.path.join(cfg.output_dir, stage), out / stage)
        run_cfg = tiny_config(out, **{"align.lora_rank": 4})
        run_cfg.align.train.frozen_dtype = dtype
        run_cfg.align.train.log_every = 1
        align.run_method(run_cfg, "gold")
        with open(out / "align" / "gold" / "metrics.jsonl") as f:
            losses[dtype] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses["bfloat16"]) > 1 and losses["bfloat16"] != losses["float32"]
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2, atol=1e-3)
    from safetensors.numpy import load_file
    saved = load_file(str(tmp_path / "bfloat16" / "align" / "gold" / "model" / "model.safetensors"))
    assert {str(v.dtype) for v in saved.values()} == {"float32"}


def test_stages_read_their_token_ids_from_the_run_folders_stores(tiny_run, tmp_path,
                                                                 monkeypatch):
    """Each tokenising stage left one complete store under tokens/ (align's methods share the
    pool's); the score stage run again beside them tokenises nothing and writes the same
    scores."""
    from cwpo_jax.data import token_store
    from cwpo_jax.data.tokenize import PairTokenizer
    from cwpo_jax.stages import score

    cfg, _ = tiny_run
    tokens = os.path.join(cfg.output_dir, "tokens")
    names = sorted(os.listdir(tokens))
    assert all(token_store.open_store(os.path.join(tokens, n)) is not None for n in names)
    # pairs: labelled, eval (annotator), unlabelled (score), the pool (align), the movement
    # passes (the reference's, one per policy); sequences: sft
    movement = 1 + len(cfg.align.methods)
    assert sorted(n.split("-")[0] for n in names) == ["pairs"] * (4 + movement) + ["sequences"]
    out = tmp_path / "rerun"
    out.mkdir()
    for stage in ("data", "annotator", "tokens"):
        os.symlink(os.path.join(cfg.output_dir, stage), out / stage)

    def refuse(*args):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(PairTokenizer, "encode_pairs", refuse)
    score.run(tiny_config(out))
    again = scores.read_scores(os.path.join(out, "score", "scores.jsonl"))
    first = scores.read_scores(os.path.join(cfg.output_dir, "score", "scores.jsonl"))
    assert list(again["ids"]) == list(first["ids"])
    for key in ("score_a", "score_b"):
        np.testing.assert_allclose(again[key], first[key], rtol=1e-6, atol=1e-6)
    assert sorted(os.listdir(tokens)) == names


def test_shared_prefix_pass_equals_whole_rows(tiny_run, tmp_path):
    """Prompts that start with one system message (all but one): the log-prob pass that runs
    those tokens once per batch (align.shared_prefix) gives the log-probs of rows that hold
    them, and the one prompt without them keeps its row."""
    from cwpo_jax import models
    from cwpo_jax.data import PreferencePair
    from cwpo_jax.stages import common, run_folder
    from cwpo_jax.stages.pair_passes import pair_batches, pair_logprobs_pass

    cfg, _ = tiny_run
    system = {"role": "system",
              "content": "Answer as a careful, friendly assistant in one short sentence."}
    pairs = [PreferencePair(id=p.id, prompt=(system, *p.prompt) if i else p.prompt,
                            chosen=p.chosen, rejected=p.rejected, source=p.source)
             for i, p in enumerate(run_folder.load_split(cfg, "unlabelled"))]
    ref = run_folder.reference_path(cfg)
    model, tok = models.from_pretrained(ref), models.load_tokenizer(ref)
    out = {}
    for share in (True, False):
        run_cfg = tiny_config(tmp_path, **{"data.max_prompt_len": 64, "data.max_len": 96,
                                           "align.shared_prefix": share})
        store = common.pair_store(run_cfg, common.pair_tokenizer(run_cfg, tok), pairs)
        collate, _ = pair_batches(run_cfg, store, tok, share_prefix=share)
        prefix = collate.keywords["prefix"]
        assert (prefix is not None and len(prefix) >= 8) == share
        out[share] = pair_logprobs_pass(run_cfg, model, store, tok, name="test")
    for got, want in zip(out[True], out[False]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_max_pairs_trains_every_method_on_one_seeded_subset(tiny_run, tmp_path):
    """align.max_pairs: the same seeded subset of the unlabelled pairs for every method, in the
    split's order; the confidences are the score stage's for those ids; the labelled pairs of
    human_all stay whole; training and the reference pass see only the subset."""
    from cwpo_jax.stages import run_folder

    cfg, _ = tiny_run
    unlabelled = run_folder.load_split(cfg, "unlabelled")
    k = len(unlabelled) // 2
    capped_cfg = tiny_config(cfg.output_dir, **{"align.max_pairs": k})
    pool, n_labelled = align.pool_pairs(capped_cfg)
    subset = pool[n_labelled:]
    assert len(subset) == k and n_labelled == len(run_folder.load_split(cfg, "labelled"))
    order = [p.id for p in unlabelled]
    positions = [order.index(p.id) for p in subset]
    assert positions == sorted(positions)  # the split's order kept
    assert [p.id for p in align.capped(unlabelled[::-1], k, seed=cfg.seed)][::-1] == \
        [p.id for p in subset]  # which pairs depends on the ids and the seed, not the order
    assert align.capped(unlabelled, k, seed=cfg.seed + 1) != subset
    assert align.capped(unlabelled, 0, seed=cfg.seed) == unlabelled

    s = scores.read_scores(os.path.join(cfg.output_dir, "score", "scores.jsonl"))
    c1 = dict(zip(s["ids"], s["c1"]))
    ids = [p.id for p in pool]
    _, weight, keep = align.method_targets(capped_cfg, "weak_confidence", ids, n_labelled)
    np.testing.assert_array_equal(weight[n_labelled:], [c1[i] for i in ids[n_labelled:]])
    assert keep[n_labelled:].all() and not keep[:n_labelled].any()

    for stage in ("data", "annotator", "score", "sft", "init"):
        if os.path.exists(os.path.join(cfg.output_dir, stage)):
            os.symlink(os.path.join(cfg.output_dir, stage), tmp_path / stage)
    run_cfg = tiny_config(tmp_path, **{"align.max_pairs": k})
    # human: no scores needed (the score file names tiny_run's annotator path, not this one)
    done = align.run_method(run_cfg, "human")
    assert done["pairs"] == k
    (cache,) = os.listdir(tmp_path / "refcache")
    with np.load(tmp_path / "refcache" / cache) as f:
        assert list(f["ids"]) == ids  # human_all's labelled pairs + the subset
