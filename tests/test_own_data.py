"""A user's own preference file, end to end: TRL's four layouts (standard or conversational,
explicit or implicit prompt) and renamed columns, read per row; the tiny pipeline from the
launcher on a JSONL holding every layout, with evaluate.gold_judge=none; and the refusal of a
file run that names no judge."""
import glob
import json
import os
import subprocess
import sys

import pytest

from cwpo_jax.data import load_preferences
from cwpo_jax.stages import config as config_lib
from cwpo_jax.stages.prepare import synthetic_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu")
LAYOUTS = ("standard_explicit", "standard_implicit", "conversational_explicit",
           "conversational_implicit")


def triples(n: int, seed: int = 0):
    """(prompt, a, b) whose responses start with different words, so an implicit prompt (the
    text both responses start with) is exactly the prompt."""
    return [t for t in synthetic_pairs(4 * n, seed) if t[1].split()[0] != t[2].split()[0]][:n]


def trl_row(layout: str, prompt: str, chosen: str, rejected: str) -> dict:
    user = [{"role": "user", "content": prompt}]
    if layout == "standard_explicit":
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if layout == "standard_implicit":
        return {"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"}
    if layout == "conversational_explicit":
        return {"prompt": user, "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}
    return {"chosen": user + [{"role": "assistant", "content": chosen}],
            "rejected": user + [{"role": "assistant", "content": rejected}]}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_trl_layout_reads_to_the_same_pairs(tmp_path, layout):
    data = triples(6)
    path = write_jsonl(tmp_path / f"{layout}.jsonl", [trl_row(layout, *t) for t in data])
    pairs, report = load_preferences(path, format="trl")
    assert report.kept == len(data) and not report.n_skipped, str(report)
    for pair, (prompt, chosen, rejected) in zip(pairs, data):
        assert pair.prompt == ({"role": "user", "content": prompt},)
        assert (pair.chosen.strip(), pair.rejected.strip()) == (chosen, rejected)


def test_a_conversation_keeps_every_turn_and_renders_with_the_students_chat_template(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from cwpo_jax.data import PairTokenizer

    turns = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "Name a colour."},
             {"role": "assistant", "content": "Red."},
             {"role": "user", "content": "Another one?"}]
    row = {"chosen": turns + [{"role": "assistant", "content": "Blue."}],
           "rejected": turns + [{"role": "assistant", "content": "No."}]}
    (pair,), _ = load_preferences(write_jsonl(tmp_path / "chat.jsonl", [row]), format="trl")
    assert list(pair.prompt) == turns and (pair.chosen, pair.rejected) == ("Blue.", "No.")
    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(["x"], trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="</s>")
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    rendered = PairTokenizer(tok, max_prompt_len=64, max_len=128).render_prompt(pair.prompt)
    assert rendered == ("[system] Be brief.\n[user] Name a colour.\n[assistant] Red.\n"
                        "[user] Another one?\n[assistant] ")


def test_trl_rows_that_fit_no_layout_are_skipped_with_a_reason(tmp_path):
    user = [{"role": "user", "content": "hi"}]
    rows = [{"chosen": "alpha beta", "rejected": "gamma delta"},  # nothing shared: no prompt
            {"chosen": "a text", "rejected": [{"role": "assistant", "content": "b"}]},
            {"chosen": user + [{"role": "assistant", "content": "x"}],
             "rejected": [{"role": "user", "content": "other"},
                          {"role": "assistant", "content": "y"}]}]
    _, report = load_preferences(write_jsonl(tmp_path / "bad.jsonl", rows), format="trl")
    assert report.kept == 0
    assert dict(report.skipped) == {"no_prompt": 1, "wrong_type": 1, "prompt_mismatch": 1}


def test_renamed_columns_reach_the_reader_from_the_config(tmp_path):
    sys.path.insert(0, ROOT)
    from configs import tiny

    from cwpo_jax.stages import prepare, run_folder

    rows = [{"question": p, "good": c, "bad": r, "key": i}
            for i, (p, c, r) in enumerate(triples(40))]
    cfg = tiny.get_config()
    cfg.output_dir = str(tmp_path / "run")
    cfg.data.update(source="file", format="jsonl", num_pairs=0,
                    path=write_jsonl(tmp_path / "mine.jsonl", rows))
    cfg.data.columns.update(prompt="question", chosen="good", rejected="bad", id="key")
    cfg.evaluate.gold_judge = "none"
    cfg.align.methods = ("human", "weak_confidence")
    config_lib.validate(cfg)
    summary = prepare.run(cfg)
    assert summary["read_report"].startswith("read 40 rows: kept 40, skipped 0")
    ids = {p.id for split in ("labelled", "unlabelled", "eval")
           for p in run_folder.load_split(cfg, split)}
    assert ids == {f"jsonl:{i}" for i in range(40)}
    cfg.data.format = "hh_rlhf"
    with pytest.raises(config_lib.ConfigError, match="data.columns: a column mapping applies"):
        config_lib.validate(cfg)
    cfg.data.update(format="jsonl", source="synthetic", num_pairs=96, gold_judge="lexicon",
                    rater_temperature=0.3)
    with pytest.raises(config_lib.ConfigError, match="data.columns: names a file's columns"):
        config_lib.validate(cfg)


def launch(out, *args):
    """The README's command on tiny models, as a user runs it: one CPU device (not the tests'
    eight), with a compilation cache in the run's parent folder."""
    cmd = [sys.executable, "launch/pipeline.py", "--config=configs/tiny.py",
           f"--config.output_dir={out}", *args]
    env = {k: v for k, v in ENV.items() if k != "XLA_FLAGS"}
    env["CWPO_COMPILATION_CACHE"] = str(out.parent / "xla")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def test_a_file_run_without_a_named_judge_is_refused_before_any_compute(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [trl_row("standard_explicit", *t)
                                                  for t in triples(4)])
    out = tmp_path / "out"
    r = launch(out, "--config.data.source=file", "--config.data.format=trl",
               f"--config.data.path={path}", "--config.align.methods=('human',)")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "evaluate.gold_judge: is required for data.source=file" in r.stderr
    assert not out.exists()


def test_every_trl_layout_in_one_file_trains_through_the_launcher_without_a_judge(tmp_path):
    data = triples(64)
    rows = [trl_row(LAYOUTS[i % 4], *t) for i, t in enumerate(data)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    out = tmp_path / "run"
    methods = ("human", "weak_confidence")
    r = launch(out, "--config.data.source=file", "--config.data.format=trl",
               f"--config.data.path={path}", "--config.evaluate.gold_judge=none",
               f"--config.align.methods={methods!r}", "--config.align.train.epochs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    data_summary = json.load(open(out / "data" / "done.json"))
    assert data_summary["read_report"] == "read 64 rows: kept 64, skipped 0"
    prompts = {json.loads(line)["prompt"][0]["content"]
               for split in ("labelled", "unlabelled", "eval")
               for line in open(out / "data" / f"{split}.jsonl")}
    assert prompts == {t[0] for t in data}
    results = json.load(open(out / "results.json"))
    assert results["gold_judge"] == "none" and results["differences"] == {}
    assert set(results["methods"]) == set(methods)
    for method, m in results["methods"].items():
        assert "gra" not in m and m["pairs"] > 0 and m["final_loss"] is not None
        model = out / "align" / method / "model"
        assert m["policy"] == str(model)
        assert (model / "config.json").exists() and glob.glob(str(model / "*.safetensors"))
        records = [json.loads(line) for line in open(out / "align" / method / "metrics.jsonl")]
        assert "rewards/accuracies" in records[-1]
    assert not glob.glob(str(out / "eval" / "samples_*.jsonl"))  # nothing was sampled
    assert "No gold judge" in (out / "results.md").read_text()
    assert (out / "plots" / "training.png").exists()


def test_the_own_data_preset_needs_only_a_path_and_a_judge():
    sys.path.insert(0, ROOT)
    from configs import own_data

    cfg = own_data.get_config()
    cfg.output_dir = "/tmp/unused"
    with pytest.raises(config_lib.ConfigError) as refused:
        config_lib.validate(cfg, num_devices=8)
    assert [line.split(":")[0] for line in str(refused.value).splitlines()] == [
        "data.path", "evaluate.gold_judge"]
    cfg.data.path, cfg.evaluate.gold_judge = "my_pairs.jsonl", "none"
    config_lib.validate(cfg, num_devices=8)
    assert cfg.data.format == "trl" and "gold" not in cfg.align.methods
