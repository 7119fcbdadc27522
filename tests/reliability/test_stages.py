"""The real pipeline stages (configs/tiny.py) under faults: NaN in a batch of the align stage,
a corrupt reference cache, a crash between a stage's output and its done marker; and
determinism: the same config and seed twice give identical metrics, model and scores files."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

from cwpo_jax import models
from cwpo_jax.stages import align, annotator, common, prepare, run_folder, score, sft
from cwpo_jax.train import fit
from cwpo_jax.train.loop import NonFiniteError
from tests.wrapped_batches import WrappedBatches

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMING_KEYS = {"tokens_per_s", "padded_tokens_per_s", "mfu"}


def tiny_config(output_dir):
    sys.path.insert(0, ROOT)
    from configs import tiny

    cfg = tiny.get_config()
    cfg.output_dir = str(output_dir)
    cfg.annotator.train.log_every = 1
    cfg.align.train.log_every = 1
    cfg.align.train.save_every = 2
    cfg.align.methods = ("weak_confidence",)
    return cfg


def run_until_score(cfg):
    for stage in (prepare, annotator, score):
        stage.run(cfg)


class NanAtStep4(WrappedBatches):
    """Training batches whose step 4 (both micro-batches) has NaN weights. Counted where the
    loop takes them: grain's threads collate ahead of it, in any order."""

    taken = 0

    def __next__(self):
        batch = super().__next__()
        self.taken += 1
        if self.taken == 4:
            batch["weights"] = np.full_like(batch["weights"], np.nan)
        return batch


def poison_step_4(monkeypatch):
    real = fit.train_batches
    monkeypatch.setattr(fit, "train_batches", lambda *a, **kw: NanAtStep4(real(*a, **kw)))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("first"))
    run_until_score(cfg)
    sft.run(cfg)
    return cfg


def read_metrics(path):
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_same_config_and_seed_give_identical_outputs(first_run, tmp_path):
    cfg_b = tiny_config(tmp_path)
    run_until_score(cfg_b)
    a, b = first_run.output_dir, cfg_b.output_dir
    for name in ("labelled", "unlabelled", "eval", "gold"):
        ext = "json" if name == "gold" else "jsonl"
        assert read_bytes(f"{a}/data/{name}.{ext}") == read_bytes(f"{b}/data/{name}.{ext}"), name
    metrics_a = read_metrics(f"{a}/annotator/metrics.jsonl")
    assert len(metrics_a) > 5 and metrics_a == read_metrics(f"{b}/annotator/metrics.jsonl")
    assert (read_bytes(f"{a}/annotator/model/model.safetensors")
            == read_bytes(f"{b}/annotator/model/model.safetensors"))
    lines_a = read_bytes(f"{a}/score/scores.jsonl").splitlines()
    lines_b = read_bytes(f"{b}/score/scores.jsonl").splitlines()
    assert len(lines_a) > 10 and lines_a[1:] == lines_b[1:]  # every row, byte for byte
    head_a, head_b = json.loads(lines_a[0]), json.loads(lines_b[0])
    assert head_a["annotator"]["sha256"] == head_b["annotator"]["sha256"]
    head_a["annotator"].pop("path"), head_b["annotator"].pop("path")  # the run folders differ
    assert head_a == head_b


def test_nan_in_an_align_batch_stops_with_step_and_resume_finishes(first_run, monkeypatch,
                                                                   capfd):
    cfg = first_run
    stage = "align/weak_confidence"
    poison_step_4(monkeypatch)
    ckpt_dir = run_folder.path(cfg, stage, "ckpt")
    with pytest.raises(NonFiniteError, match=rf"\[{stage}\] step 4: loss nan .* not finite; "
                                             rf"stopped without applying it. Last good "
                                             rf"checkpoint: {ckpt_dir}/2"):
        align.run_method(cfg, "weak_confidence")
    assert not run_folder.is_done(cfg, stage)
    assert not os.path.exists(run_folder.path(cfg, stage, "model"))
    assert sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) == [2]
    monkeypatch.undo()
    capfd.readouterr()
    summary = align.run_method(cfg, "weak_confidence")
    assert f"resumed from {ckpt_dir}/2" in capfd.readouterr().err
    assert run_folder.is_done(cfg, stage) and os.path.exists(summary["policy"])
    with open(run_folder.path(cfg, stage, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert all(np.isfinite(r["loss"]) for r in records)


def _reference_inputs(cfg):
    ref_path = run_folder.reference_path(cfg)
    tok = models.load_tokenizer(ref_path)
    pool = run_folder.load_split(cfg, "labelled") + run_folder.load_split(cfg, "unlabelled")
    tokenized = common.pair_store(cfg, common.pair_tokenizer(cfg, tok), pool)
    return [p.id for p in pool], tokenized, ref_path, tok


def cache_file_for(cfg, ids):
    """The refcache file holding these pairs (the align run may have cached another pool)."""
    folder = run_folder.path(cfg, "refcache")
    for name in sorted(os.listdir(folder)):
        with np.load(os.path.join(folder, name)) as f:
            if list(f["ids"]) == list(ids):
                return os.path.join(folder, name)
    raise AssertionError(f"no reference cache for these pairs in {folder}")


@pytest.mark.parametrize("damage,message", [
    ("truncate", "is unreadable"), ("nan", "holds NaN/inf"), ("other_ids", "for other pairs")])
def test_bad_reference_cache_is_recomputed(first_run, capfd, damage, message):
    cfg = first_run
    ids, tokenized, ref_path, tok = _reference_inputs(cfg)
    chosen, rejected = align.reference_logprobs(cfg, ids, tokenized, ref_path, tok)
    cache = cache_file_for(cfg, ids)
    if damage == "truncate":
        with open(cache, "r+b") as f:
            f.truncate(os.path.getsize(cache) // 2)
    else:
        bad_ids = np.asarray(ids if damage == "nan" else ids[::-1])
        bad = chosen.copy()
        bad[3] = np.nan if damage == "nan" else bad[3]
        with open(cache, "wb") as f:
            np.savez(f, ids=bad_ids, chosen=bad, rejected=rejected)
    capfd.readouterr()
    again_c, again_r = align.reference_logprobs(cfg, ids, tokenized, ref_path, tok)
    err = capfd.readouterr().err
    assert f"reference cache {cache}" in err and message in err and "recomputing" in err
    np.testing.assert_allclose(again_c, chosen, rtol=1e-5)
    np.testing.assert_allclose(again_r, rejected, rtol=1e-5)
    # the recomputed file replaced the bad one and is a clean hit now
    capfd.readouterr()
    align.reference_logprobs(cfg, ids, tokenized, ref_path, tok)
    assert "cache hit" in capfd.readouterr().err


def test_crash_between_output_and_done_marker_reruns_to_the_same_model(first_run, capfd):
    """A stage killed after its last checkpoint but before done.json: the rerun restores the
    final checkpoint (no step trained again) and writes the same model."""
    cfg = first_run
    model = run_folder.path(cfg, "annotator", "model", "model.safetensors")
    before = read_bytes(model)
    marker = run_folder.done_marker(cfg, "annotator")
    saved_marker = read_bytes(marker)
    os.remove(marker)
    shutil.rmtree(run_folder.path(cfg, "annotator", "model"))  # the model save was cut short too
    n_records = len(read_metrics(run_folder.path(cfg, "annotator", "metrics.jsonl")))
    capfd.readouterr()
    annotator.run(cfg)
    assert "resumed from" in capfd.readouterr().err
    assert read_bytes(model) == before
    assert len(read_metrics(run_folder.path(cfg, "annotator", "metrics.jsonl"))) == n_records
    assert json.loads(read_bytes(marker)) == json.loads(saved_marker)


def _align_copy(first_run, directory, *, scan_layers):
    """A copy of first_run's outputs up to sft, set to align with or without scanned layers."""
    shutil.copytree(first_run.output_dir, directory,
                    ignore=lambda d, names: ["align"] if d == first_run.output_dir else [])
    cfg = tiny_config(directory)
    cfg.align.train.scan_layers = scan_layers
    scores = run_folder.path(cfg, "score", "scores.jsonl")  # its header names the annotator's path
    with open(scores) as f:
        header, rest = json.loads(f.readline()), f.read()
    header["annotator"]["path"] = run_folder.path(cfg, "annotator", "model")
    with open(scores, "w") as f:
        f.write(json.dumps(header) + "\n" + rest)
    return cfg


def _safetensors(path):
    from safetensors.numpy import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def test_align_with_scan_layers_resumes_and_matches_unrolled(first_run, tmp_path, monkeypatch,
                                                             capfd):
    """align.train.scan_layers: the same losses and exported model as the unrolled layers, and a
    stacked checkpoint resumes after a failed step."""
    plain = _align_copy(first_run, tmp_path / "plain", scan_layers=False)
    scanned = _align_copy(first_run, tmp_path / "scanned", scan_layers=True)
    expected = align.run_method(plain, "weak_confidence")

    poison_step_4(monkeypatch)  # step 4 of the stacked run fails; checkpoint 2 remains
    with pytest.raises(NonFiniteError):
        align.run_method(scanned, "weak_confidence")
    monkeypatch.undo()
    capfd.readouterr()
    got = align.run_method(scanned, "weak_confidence")
    assert "resumed from" in capfd.readouterr().err

    stage = "align/weak_confidence"
    want_losses = [r["loss"] for r in read_metrics(run_folder.path(plain, stage, "metrics.jsonl"))]
    got_losses = [r["loss"] for r in read_metrics(run_folder.path(scanned, stage, "metrics.jsonl"))]
    assert len(got_losses) >= len(want_losses) > 3
    np.testing.assert_allclose(got_losses[-len(want_losses):], want_losses, rtol=1e-4)
    want, have = _safetensors(expected["policy"]), _safetensors(got["policy"])
    assert sorted(have) == sorted(want) and any(".layers.1." in k for k in have)
    for name in want:
        np.testing.assert_allclose(have[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
