"""Readers: every published schema on hand-written fixtures, bad rows, strict mode, hub path."""

import gzip
import json
import os
import shutil

import pytest
from hypothesis import given, settings, strategies as st

from cwpo_jax.data import (
    BadRowError,
    PreferencePair,
    ReadReport,
    load_preferences,
    read_preferences,
    write_preferences,
)
from cwpo_jax.data import readers
from cwpo_jax.data.records import SkipRow
from cwpo_jax.data.schemas import split_hh_transcripts, tldr_prompt
from tests.data.conftest import fixture

GENERIC = {"prompt": "question", "chosen": "good", "rejected": "bad", "id": "qid"}
AB = {
    "prompt": "instruction",
    "response_a": "output_1",
    "response_b": "output_2",
    "label": "preference",
}


def user(text):
    return {"role": "user", "content": text}


def asst(text):
    return {"role": "assistant", "content": text}


# ----------------------------------------------------------------------------- HH-RLHF
def test_hh_rlhf_rows_and_skips():
    pairs, rep = load_preferences(fixture("hh_rlhf.jsonl"), format="hh_rlhf")
    assert [p.prompt for p in pairs] == [
        (user("What is the capital of France?"),),
        (
            user("Can you help me bake bread?"),
            asst("Sure, what kind of bread?"),
            user("A simple white loaf."),
            asst("Mix flour, water, salt and yeast, knead, let it rise, then bake."),
            user("How long should it rise?"),
        ),
        (user("My script prints Human: and Assistant: labels, why?"),),
        (user("hello there"),),
    ]
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("The capital of France is Paris.", "I think it is Lyon."),
        ("About one hour, until it doubles in size.", "Overnight is best."),
        (
            "Your format string includes the literal words Human: and Assistant: on one line.",
            "No idea.\n\nHuman: thanks\n\nAssistant: You are welcome.",
        ),
        ("Hi! How can I help you today?", "go away"),
    ]
    assert all(p.source == "hh_rlhf" and p.id.startswith("hh_rlhf:") for p in pairs)
    assert rep.rows == 12 and rep.kept == 4  # 13 lines, one blank
    assert dict(rep.skipped) == {
        "duplicate": 1,
        "empty_response": 1,
        "identical_responses": 1,
        "malformed_json": 1,
        "missing_field": 1,
        "bad_transcript": 1,
        "undecodable_text": 2,
    }
    assert rep.examples["malformed_json"][0].startswith(fixture("hh_rlhf.jsonl") + ":8")
    text = str(rep)
    assert "kept 4, skipped 8" in text and "undecodable_text: 2" in text


@pytest.mark.parametrize(
    "line,reason", [(5, "duplicate"), (6, "empty_response"), (8, "malformed_json")]
)
def test_strict_names_file_line_reason(tmp_path, line, reason):
    # Keep only the good first four rows plus the bad line under test.
    with open(fixture("hh_rlhf.jsonl"), "rb") as f:
        lines = f.read().splitlines(keepends=True)
    path = tmp_path / "one_bad.jsonl"
    path.write_bytes(b"".join(lines[:4] + [lines[line - 1]]))
    with pytest.raises(BadRowError) as e:
        list(read_preferences(str(path), format="hh_rlhf", strict=True))
    assert f"{path}:5: {reason}" in str(e.value)
    assert e.value.reason == reason


def test_skips_are_logged_without_a_report(caplog):
    with caplog.at_level("WARNING"):
        n = sum(1 for _ in read_preferences(fixture("hh_rlhf.jsonl"), format="hh_rlhf"))
    assert n == 4
    assert "skipped 8" in caplog.text and "malformed_json: 1" in caplog.text


def test_hh_split_edge_cases():
    # Responses sharing their first words: the split stays at the last shared Assistant tag.
    p, c, r = split_hh_transcripts(
        "\n\nHuman: q\n\nAssistant: I think yes", "\n\nHuman: q\n\nAssistant: I think no"
    )
    assert (p, c, r) == ([user("q")], "I think yes", "I think no")
    # One response is a prefix of the other.
    p, c, r = split_hh_transcripts(
        "\n\nHuman: q\n\nAssistant: Sure", "\n\nHuman: q\n\nAssistant: Sure thing"
    )
    assert (c, r) == ("Sure", "Sure thing")
    with pytest.raises(SkipRow, match="bad_transcript"):
        split_hh_transcripts("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: b")
    with pytest.raises(SkipRow, match="bad_transcript"):
        split_hh_transcripts(
            "preamble\n\nHuman: a\n\nAssistant: b", "preamble\n\nHuman: a\n\nAssistant: c"
        )
    with pytest.raises(SkipRow, match="bad_transcript"):
        split_hh_transcripts(
            "\n\nHuman: a\n\nHuman: a2\n\nAssistant: b", "\n\nHuman: a\n\nHuman: a2\n\nAssistant: c"
        )


# Turn text: anything without a blank-line-then-tag, including inline "Human:" and newlines.
_turn = st.text(st.sampled_from("ab Hum:Assistn\n.?"), min_size=1, max_size=25).filter(
    lambda s: "\n\nHuman:" not in s and "\n\nAssistant:" not in s and s.strip() == s and s
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_turn, _turn), max_size=3),
    _turn,
    _turn,
    _turn,
    st.sampled_from(["", "  ", "\n\n"]),
    st.sampled_from(["", " \n", "\n\n"]),
)
def test_hh_transcript_roundtrip(history, last_q, a, b, lead, trail):
    """Rendering a dialogue the HH way and parsing it back gives the same messages, whatever
    the responses share and whatever whitespace surrounds the transcript."""
    if a == b:
        return

    def render(resp):
        body = "".join(f"\n\nHuman: {q}\n\nAssistant: {r}" for q, r in history)
        body += f"\n\nHuman: {last_q}\n\nAssistant: {resp}"
        return lead + body[2:] + trail  # lead replaces the leading blank line

    prompt, c, r = split_hh_transcripts(render(a), render(b))
    assert prompt == [m for q, x in history for m in (user(q), asst(x))] + [user(last_q)]
    assert (c, r) == (a, b)


# ----------------------------------------------------------------------------- TL;DR
def test_tldr_rows():
    pairs, rep = load_preferences(fixture("tldr_comparisons.json"), format="tldr")
    assert len(pairs) == 4
    assert pairs[0].prompt == (
        user(
            "SUBREDDIT: r/relationships\n\nTITLE: My roommate never cleans\n\nPOST: We share a flat "
            "and the kitchen is always a mess. I tried talking to him twice.\n\nTL;DR:"
        ),
    )
    assert (pairs[0].chosen, pairs[0].rejected) == (
        "Roommate leaves kitchen dirty despite two talks.",
        "I have a roommate.",
    )
    # choice 1 prefers the second summary
    assert pairs[1].chosen.startswith("Roommate keeps kitchen messy")
    assert pairs[0].id.startswith("tldr:t3_abc123:") and pairs[0].id != pairs[1].id
    assert (
        pairs[3]
        .prompt[0]["content"]
        .endswith(
            "ARTICLE: The city council approved a new park on Tuesday after months of debate."
            "\n\nTL;DR:"
        )
    )
    assert dict(rep.skipped) == {"bad_label": 1, "bad_summaries": 1, "missing_field": 2}


def test_tldr_split_field_selects_rows():
    rep = ReadReport()
    pairs = list(
        read_preferences(
            fixture("tldr_comparisons.json"), format="tldr", split="valid1", report=rep
        )
    )
    assert [p.id.split(":")[1] for p in pairs] == ["t3_xyz789"]
    assert dict(rep.skipped) == {"other_split": 7}  # counted, not hidden


def test_tldr_prompt_without_subreddit_or_title():
    assert tldr_prompt({"post": " text "}) == "POST: text\n\nTL;DR:"


# ----------------------------------------------------------------------------- UltraFeedback
def test_ultrafeedback_rows():
    pairs, rep = load_preferences(fixture("ultrafeedback.jsonl"), format="ultrafeedback")
    assert [p.prompt for p in pairs] == [
        (user("Write a haiku about rain."),),
        ({"role": "system", "content": "You are a careful math tutor."}, user("What is 2+2?")),
        (user("Translate 'cat' to French."), asst("chat"), user("And 'dog'?")),
    ]
    assert [p.rejected for p in pairs] == ["Rain is wet.", "It is 5.", "perro"]
    assert pairs[0].id.startswith("ultrafeedback:a1b2c3d4e5f60718:")
    assert dict(rep.skipped) == {"bad_message": 2, "prompt_mismatch": 1, "wrong_type": 1}


def test_ultrafeedback_parquet_matches_jsonl(tmp_path):
    """The hub publishes UltraFeedback as parquet: same rows, same ids, same pairs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(fixture("ultrafeedback.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:3]
    path = tmp_path / "train_prefs-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    from_parquet, rep = load_preferences(str(path), format="ultrafeedback")
    from_jsonl, _ = load_preferences(fixture("ultrafeedback.jsonl"), format="ultrafeedback")
    assert from_parquet == from_jsonl and rep.n_skipped == 0
    with pytest.raises(BadRowError, match=r"row 1"):
        pq.write_table(pa.Table.from_pylist([{**rows[0], "rejected": rows[0]["chosen"]}]), path)
        list(read_preferences(str(path), format="ultrafeedback", strict=True))


# ----------------------------------------------------------------------------- generic
def test_generic_jsonl_pair_columns():
    pairs, rep = load_preferences(fixture("generic.jsonl"), format="jsonl", columns=GENERIC)
    assert [p.id for p in pairs] == ["jsonl:q1", "jsonl:q2", "jsonl:q3"]
    assert pairs[1].prompt == ({"role": "system", "content": "Be brief."}, user("Is water wet?"))
    assert (pairs[2].chosen, pairs[2].rejected) == ("Hi!", "Bye.")
    assert dict(rep.skipped) == {
        "duplicate": 1,
        "missing_field": 1,
        "empty_response": 1,
        "wrong_type": 1,
        "prompt_mismatch": 1,
    }


def test_generic_ab_label_columns():
    pairs, rep = load_preferences(
        fixture("generic_ab.jsonl"), format="jsonl", columns=AB, source="mine"
    )
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("Apple.", "Rock."),
        ("Seven.", "Banana."),
        ("B", "9"),
    ]
    assert all(p.source == "mine" and p.id.startswith("mine:") for p in pairs)
    assert dict(rep.skipped) == {"bad_label": 2}


def test_generic_parquet_with_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "q": ["Hi?", "Yo?", "Same?"],
            "a": ["Hello.", "Hey.", "x"],
            "b": ["Go away.", "Hey.", "y"],
            "pref": [0, 1, 1],
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    rep = ReadReport()
    pairs = list(
        read_preferences(
            str(path),
            format="parquet",
            report=rep,
            columns={"prompt": "q", "response_a": "a", "response_b": "b", "label": "pref"},
        )
    )
    assert [(p.chosen, p.rejected) for p in pairs] == [("Hello.", "Go away."), ("y", "x")]
    assert rep.examples["identical_responses"] == [f"{path} row 2"]


def test_parquet_binary_column_with_bad_utf8(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bin.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt": pa.array([b"ok", b"caf\xe9"], pa.binary()),
                "chosen": ["a", "a"],
                "rejected": ["b", "b"],
            }
        ),
        path,
    )
    rep = ReadReport()
    pairs = list(read_preferences(str(path), format="parquet", report=rep))
    assert [p.prompt[0]["content"] for p in pairs] == ["ok"]
    assert rep.examples["undecodable_text"][0].startswith(f"{path} row 2")


def test_bad_column_mapping_fails_before_reading():
    with pytest.raises(ValueError, match="unknown column mapping keys"):
        read_preferences(fixture("generic.jsonl"), format="jsonl", columns={"question": "q"})
    with pytest.raises(ValueError, match="a column mapping applies to the formats"):
        read_preferences(fixture("hh_rlhf.jsonl"), format="hh_rlhf", columns=GENERIC)
    with pytest.raises(ValueError, match="unknown format"):
        read_preferences(fixture("hh_rlhf.jsonl"), format="csv")


# ----------------------------------------------------------------------------- containers
def test_gzip_json_array_folder_and_split(tmp_path):
    with open(fixture("hh_rlhf.jsonl"), "rb") as f:
        data = f.read()
    (tmp_path / "harmless-base").mkdir()
    with gzip.open(tmp_path / "harmless-base" / "train.jsonl.gz", "wb") as f:
        f.write(data)
    rows = [{"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: x\n\nAssistant: z"}]
    (tmp_path / "harmless-base" / "test.json").write_text(json.dumps(rows))
    train, rep = load_preferences(str(tmp_path), format="hh_rlhf", split="train")
    direct, _ = load_preferences(fixture("hh_rlhf.jsonl"), format="hh_rlhf")
    assert train == direct and rep.n_skipped == 8
    test, _ = load_preferences(str(tmp_path), format="hh_rlhf", split="test")
    assert [p.chosen for p in test] == ["y"]
    both, _ = load_preferences(str(tmp_path / "*" / "*.json*"), format="hh_rlhf")
    assert len(both) == 5
    with pytest.raises(FileNotFoundError, match="split 'valid'"):
        load_preferences(str(tmp_path), format="hh_rlhf", split="valid")
    with pytest.raises(FileNotFoundError, match="hf:owner/name"):
        load_preferences(str(tmp_path / "nope.jsonl"), format="hh_rlhf")


def test_split_matching():
    assert readers.split_matches("harmless-base/train.jsonl.gz", "train")
    assert readers.split_matches("data/train_prefs-00000-of-00001.parquet", "train_prefs")
    assert not readers.split_matches("data/train_prefs-00000-of-00001.parquet", "train")
    assert readers.split_matches("comparisons/train/0000.parquet", "train")
    assert not readers.split_matches("test.jsonl", "train")


def test_ids_do_not_depend_on_file_order(tmp_path):
    with open(fixture("hh_rlhf.jsonl"), "rb") as f:
        lines = f.read().splitlines(keepends=True)
    (tmp_path / "rev.jsonl").write_bytes(b"".join(reversed(lines[:4])))
    a, _ = load_preferences(fixture("hh_rlhf.jsonl"), format="hh_rlhf")
    b, _ = load_preferences(str(tmp_path / "rev.jsonl"), format="hh_rlhf")
    assert sorted(p.id for p in a) == sorted(p.id for p in b)
    assert {p.id: p for p in a} == {p.id: p for p in b}


def test_write_and_read_pairs_roundtrip(tmp_path):
    pairs, _ = load_preferences(fixture("ultrafeedback.jsonl"), format="ultrafeedback")
    path = str(tmp_path / "pairs.jsonl.gz")
    assert write_preferences(pairs, path) == 3
    back, rep = load_preferences(path, format="pairs")
    assert back == pairs and rep.n_skipped == 0
    assert PreferencePair.from_json(pairs[0].to_json()) == pairs[0]
    assert len({pairs[0], back[0]}) == 1  # hashable, equal


# ----------------------------------------------------------------------------- hub
def test_hub_path_lists_filters_and_downloads(tmp_path, monkeypatch):
    """The hub reader on a fake repo: the repo layout of Anthropic/hh-rlhf."""
    repo = tmp_path / "repo"
    for sub in ("harmless-base", "helpful-base"):
        (repo / sub).mkdir(parents=True)
        for split in ("train", "test"):
            shutil.copy(fixture("hh_rlhf.jsonl"), repo / sub / f"{split}.jsonl")
    (repo / "README.md").write_text("card")
    calls = []
    monkeypatch.setattr(
        readers,
        "_hub_list",
        lambda rid, rev: (
            calls.append((rid, rev))
            or sorted(
                os.path.relpath(os.path.join(d, n), repo) for d, _, ns in os.walk(repo) for n in ns
            )
        ),
    )
    monkeypatch.setattr(readers, "_hub_download", lambda rid, f, rev: str(repo / f))
    files = readers.hub_files("hf:Anthropic/hh-rlhf/harmless-base", "train")
    assert files == [str(repo / "harmless-base" / "train.jsonl")]
    assert calls == [("Anthropic/hh-rlhf", None)]
    pairs, rep = load_preferences("hf:Anthropic/hh-rlhf", format="hh_rlhf", split="test")
    assert len(pairs) == 4 and rep.skipped["duplicate"] == 1 + 5  # second folder repeats rows
    short, _ = load_preferences("hh_rlhf", format="hh_rlhf", split="train")
    assert short == pairs and calls[-1] == ("Anthropic/hh-rlhf", None)
    assert readers.parse_hub_name(readers.HUB_DATASETS["tldr"]) == (
        "openai/summarize_from_feedback",
        "comparisons",
        "refs/convert/parquet",
    )
    with pytest.raises(ValueError, match="owner/name"):
        readers.parse_hub_name("hf:onlyname")

    # Offline: listing fails, a cached snapshot serves; without one the error says both.
    def offline(rid, rev):
        raise OSError("offline")

    monkeypatch.setattr(readers, "_hub_list", offline)
    monkeypatch.setattr(readers, "_hub_cached_snapshot", lambda rid, rev: str(repo))
    cached = readers.hub_files("hf:Anthropic/hh-rlhf/harmless-base", "train")
    assert cached == [os.path.join(str(repo), "harmless-base/train.jsonl")]

    def no_cache(rid, rev):
        raise FileNotFoundError("not cached")

    monkeypatch.setattr(readers, "_hub_cached_snapshot", no_cache)
    with pytest.raises(FileNotFoundError, match=r"cannot list it \(offline\) and no snapshot"):
        readers.hub_files("hf:Anthropic/hh-rlhf", "train")


_line = st.one_of(
    st.builds(
        lambda q, a, b: json.dumps(
            {
                "chosen": f"\n\nHuman: {q}\n\nAssistant: {a}",
                "rejected": f"\n\nHuman: {q}\n\nAssistant: {b}",
            }
        ),
        st.text(max_size=8),
        st.text(max_size=8),
        st.text(max_size=8),
    ),
    st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(["chosen", "rejected", "x"]),
            st.one_of(st.text(max_size=5), st.integers()),
        ),
    ),
    st.text(
        alphabet=st.characters(
            codec="utf-8", blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
        ),
        max_size=20,
    ),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_line, max_size=15))
def test_every_row_is_kept_or_counted(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rep = ReadReport()
    pairs = list(read_preferences(str(path), format="hh_rlhf", report=rep))
    nonblank = sum(1 for line in lines if line.encode("utf-8").strip())  # ASCII whitespace, as read
    if "\n".join(lines).encode("utf-8").lstrip().startswith(b"["):
        return  # read as one JSON array; counted as a single malformed row or its items
    assert rep.rows == nonblank and rep.kept == len(pairs) and rep.kept + rep.n_skipped == nonblank
    assert len({p.id for p in pairs}) == len(pairs)
