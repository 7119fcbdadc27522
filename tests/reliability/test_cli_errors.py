"""Mistakes at the command line, through the real launchers: one line on stderr naming the field,
file or value, a non-zero exit, no traceback, and no done marker. Each is caught before any
training (most before any compute), so every case takes a few seconds."""
import glob
import os
import re
import subprocess
import sys

import pytest

from cwpo_jax import models
from cwpo_jax.models.gguf_io import GGUFError, GGUFFile
from cwpo_jax.gold import RewardModelJudge

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", CWPO_COMPILATION_CACHE="")
# A data file instead of tiny's synthetic pairs (no gold scores, so no "gold" method; the
# judge of GRA named, as a file run must).
FILE = ("--config.data.source=file", "--config.align.methods=('human','weak')",
        "--config.evaluate.gold_judge=lexicon")


def launch(out, *args, script="launch/pipeline.py", preset="--config=configs/tiny.py"):
    cmd = [sys.executable, script, preset, f"--config.output_dir={out}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
                          check=False)


def assert_refused(result, out, *named):
    """Non-zero exit, the last stderr line names every `named`, no traceback, no done marker."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for text in named:
        assert text in last, result.stderr
    assert not glob.glob(os.path.join(out, "**", "done.json"), recursive=True)
    return last


def own_lines(stderr: str) -> list[str]:
    """stderr without the native log lines that jax's accelerator plugins print when installed
    (requirements-aot.txt) on a machine without the accelerator."""
    return [line for line in stderr.strip().splitlines()
            if not re.match(r"WARNING: All log messages before absl|[IWEF]\d{4} \d\d:", line)]


def test_unknown_override_key_names_the_flag_and_keeps_the_hint(tmp_path):
    r = launch(tmp_path, "--config.align.lossx=dpo")
    assert_refused(r, tmp_path, "--config.align.lossx: no such config field",
                   'did you mean "loss"?')
    assert len(own_lines(r.stderr)) == 1, r.stderr


@pytest.mark.parametrize("flag,expected", [
    ("--config.nothing_like_this.x=1", "--config.nothing_like_this.x: no such config field"),
    ("--config.align.beta=abc", "flag --config.align.beta=abc: could not convert string to float"),
])
def test_unknown_field_without_a_close_match_and_a_value_of_the_wrong_type(tmp_path, flag,
                                                                          expected):
    assert_refused(launch(tmp_path, flag), tmp_path, expected)


def test_preset_file_that_does_not_exist_lists_the_presets(tmp_path):
    r = launch(tmp_path, preset="--config=configs/nope.py")
    assert_refused(r, tmp_path, "--config=configs/nope.py", "No such file", "configs/tiny.py")


@pytest.mark.parametrize("path,expected", [
    ("missing.jsonl", "'missing.jsonl' is not a file, folder or glob"),
    ("{tmp}", "no data files at"),  # a folder without data files
])
def test_missing_data_path_names_the_field(tmp_path, path, expected):
    out = tmp_path / "out"
    r = launch(out, *FILE, f"--config.data.path={path.format(tmp=tmp_path)}")
    assert_refused(r, out, "data.path: ", expected)
    assert not out.exists()  # refused before any compute


@pytest.mark.parametrize("field,value,expected", [
    ("sft.model", "/path/no_such_model", "'/path/no_such_model' does not exist"),
    ("annotator.model", "{tmp}/missing.gguf", "missing.gguf' does not exist"),
    ("sft.model", "{tmp}/garbage.gguf", "garbage.gguf is not a GGUF file"),
    ("annotator.model", "{tmp}", "is not an HF model folder (it has no config.json)"),
    ("annotator.model", "tiny:gpt", "unknown tiny model family 'gpt'"),
    ("evaluate.gold_judge", "reward_model:/no/such/rm", "'/no/such/rm' does not exist"),
])
def test_missing_or_unreadable_model_names_the_field(tmp_path, field, value, expected):
    (tmp_path / "garbage.gguf").write_bytes(b"not a gguf file")
    out = tmp_path / "out"
    r = launch(out, f"--config.{field}={value.format(tmp=tmp_path)}")
    assert_refused(r, out, f"{field}: ", expected)
    assert not out.exists()


def test_split_smaller_than_a_batch_is_refused_after_prepare_before_training(tmp_path):
    data = tmp_path / "few.jsonl"
    data.write_text('{"prompt": "hi", "chosen": "good answer", "rejected": "bad answer"}\n'
                    '{"prompt": "broken\n')
    out = tmp_path / "out"
    r = launch(out, *FILE, "--config.data.format=jsonl", f"--config.data.path={data}")
    line = assert_refused(r, out, "labelled split has 0 pairs from", str(data),
                          "read 2 rows: kept 1, skipped 1: malformed_json 1",
                          "need at least 8 for annotator.train.batch_size")
    assert line.startswith("labelled split")
    assert sorted(os.listdir(out)) == ["data"]  # no stage after prepare started


def test_a_stage_launcher_before_prepare_says_what_to_run(tmp_path):
    r = launch(tmp_path, script="launch/train_annotator.py")
    assert_refused(r, tmp_path, "data/done.json is missing", "launch/prepare.py")


def test_a_stage_launcher_before_the_stage_it_reads_names_the_missing_path(tmp_path):
    (tmp_path / "data").mkdir()  # prepared splits, as far as the split check can tell
    (tmp_path / "data" / "done.json").write_text(
        '{"sizes": {"labelled": 29, "unlabelled": 53, "eval": 14}}')
    r = launch(tmp_path, script="launch/score.py")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"FileNotFoundError: model directory not found: {tmp_path}/annotator/model")
    assert not os.path.exists(tmp_path / "score")


def test_an_unexpected_error_is_a_traceback_under_a_line_saying_it_is_a_bug(tmp_path):
    code = ("import sys; sys.path.insert(0, 'launch'); import _cli; "
            f"sys.argv = ['x', '--config=configs/tiny.py', '--config.output_dir={tmp_path}']; "
            "_cli.main(lambda cfg: 1 / 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode != 0
    assert "unexpected error: a bug" in r.stderr
    assert r.stderr.index("unexpected error") < r.stderr.index("Traceback")
    assert r.stderr.strip().endswith("ZeroDivisionError: division by zero")


# Each model loader on its own says which path is missing or unreadable.

def test_tokenizer_of_a_missing_folder_or_gguf_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found: /path/no_such"):
        models.load_tokenizer("/path/no_such")
    with pytest.raises(FileNotFoundError, match=f"GGUF file not found: {tmp_path}/x.gguf"):
        models.load_tokenizer(str(tmp_path / "x.gguf"))


def test_gguf_that_is_missing_or_garbage_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        GGUFFile(str(tmp_path / "x.gguf"))
    (tmp_path / "bad.gguf").write_bytes(b"hello world" * 10)
    with pytest.raises(GGUFError, match="bad.gguf: not a readable GGUF file"):
        GGUFFile(str(tmp_path / "bad.gguf"))


def test_reward_model_judge_of_a_missing_folder_names_the_path():
    with pytest.raises(FileNotFoundError, match="model directory not found: /no/such/rm"):
        RewardModelJudge("/no/such/rm")
