"""Property-based fuzzing of every reader format (hh_rlhf, tldr, ultrafeedback, jsonl with both
column layouts, parquet, pairs) and container (JSON lines, JSON array, gzip, parquet): random
bytes, wrong types, missing and extra fields, huge and empty strings, unicode edge cases.

Properties: no exception but BadRowError (strict) / BadFileError (unreadable file), both
ValueErrors naming the file; kept + skipped == rows read, and rows read == the file's rows
(nothing dropped silently); every kept pair is a valid PreferencePair. tests/data has the
hand-written fixtures and an HH-only version of the counting property; this extends it to
every format and to mutated rows."""
import gzip
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwpo_jax.data import BadRowError, PreferencePair, ReadReport, read_preferences
from cwpo_jax.data.records import ROLES, BadFileError

HUGE = "x" * 300_000
EDGE_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec=None), max_size=6),  # surrogates, controls, any plane
    st.sampled_from(["", " ", "\t\n", "\x00", "\u202e\u2066rtl", "\ufeffbom", "\ud800", "\udfff",
                     "e\u0301", "\U0001f4a5" * 3, "\u2028\u2029", "\n\nHuman: hi",
                     "\n\nAssistant: yo", "Human:", "null", "[", HUGE]),
)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([10 ** 30, -1, 0, 1]),
                   st.floats(allow_nan=True, allow_infinity=True), EDGE_TEXT)
JUNK = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)

AB = {"prompt": "q", "response_a": "a", "response_b": "b", "label": "pref", "id": "uid"}


def msg(role, text):
    return {"role": role, "content": text}


def good_row(fmt, q, a, b, extra):
    if fmt == "hh_rlhf":
        return {"chosen": f"\n\nHuman: {q}\n\nAssistant: {a}",
                "rejected": f"\n\nHuman: {q}\n\nAssistant: {b}"}
    if fmt == "tldr":
        return {"info": {"id": extra, "post": q, "title": extra, "subreddit": "r"},
                "summaries": [{"text": a}, {"text": b}], "choice": 1, "split": "train"}
    if fmt == "ultrafeedback":
        return {"prompt": q, "prompt_id": extra,
                "chosen": [msg("user", q), msg("assistant", a)],
                "rejected": [msg("user", q), msg("assistant", b)]}
    if fmt == "jsonl":
        return {"prompt": q, "chosen": a, "rejected": b, "id": extra}
    if fmt == "jsonl_ab":
        return {"q": [msg("system", extra), msg("user", q)], "a": a, "b": b, "pref": "B",
                "uid": extra}
    if fmt == "pairs":
        return PreferencePair(id=f"pairs:{extra}", prompt=(msg("user", q),), chosen=a,
                              rejected=b, source="pairs").to_json()
    if fmt == "pairs_tfds":
        return {"id": f"pairs:{extra}", "prompt_roles": ["user"], "prompt_contents": [q],
                "chosen": a, "rejected": b, "source": "pairs"}
    raise AssertionError(fmt)


def read_args(fmt):
    if fmt == "jsonl_ab":
        return {"format": "jsonl", "columns": {**AB, "prompt": "q", "response_a": "a",
                                               "response_b": "b"}}
    if fmt == "pairs_tfds":
        return {"format": "pairs"}
    return {"format": fmt}


FORMATS = ["hh_rlhf", "tldr", "ultrafeedback", "jsonl", "jsonl_ab", "pairs", "pairs_tfds"]


@st.composite
def mutated(draw, value, depth=0):
    """`value` with random parts replaced by junk, dropped, or joined by extra fields."""
    action = draw(st.sampled_from(["keep"] * 5 + ["junk", "drop", "extra", "descend"]))
    if action == "junk" or (action == "descend" and depth > 3):
        return draw(JUNK)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if action == "drop" and draw(st.booleans()):
                continue
            out[k] = draw(mutated(v, depth + 1)) if action == "descend" else v
        if action == "extra":
            out[draw(st.text(max_size=6))] = draw(JUNK)
        return out
    if isinstance(value, list) and action in ("descend", "drop"):
        items = [draw(mutated(v, depth + 1)) for v in value]
        return items[:-1] if action == "drop" and items else items
    return value


@st.composite
def lines_for(draw, fmt):
    out = [b"{}"]  # a first object row: the file is JSON lines, never read as one JSON array
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["row"] * 6 + ["bytes", "blank", "truncated"]))
        if kind == "bytes":
            out.append(draw(st.binary(max_size=40)).replace(b"\n", b""))
        elif kind == "blank":
            out.append(draw(st.sampled_from([b"", b"  ", b"\t\r"])))
        else:
            row = good_row(fmt, draw(EDGE_TEXT), draw(EDGE_TEXT), draw(EDGE_TEXT),
                           draw(st.text(min_size=1, max_size=8)))
            row = draw(mutated(row))
            text = json.dumps(row, ensure_ascii=draw(st.booleans()))
            data = text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8
            if kind == "truncated":
                data = data[:draw(st.integers(0, len(data)))]
            out.append(data)
    return out


def check_pair(p: PreferencePair):
    for text in (p.id, p.chosen, p.rejected, p.source):
        assert isinstance(text, str)
        text.encode("utf-8")  # no lone surrogates got through
    assert p.prompt and p.prompt[-1]["role"] == "user"
    for m in p.prompt:
        assert m["role"] in ROLES and isinstance(m["content"], str)
        m["content"].encode("utf-8")
    assert p.chosen.strip() and p.rejected.strip() and p.chosen.strip() != p.rejected.strip()


def check_read(path, n_rows, **kwargs):
    """Non-strict: counts add up; strict: the same pairs, or BadRowError at file:line."""
    report = ReadReport()
    pairs = list(read_preferences(path, report=report, **kwargs))
    assert report.rows == n_rows, (report.rows, n_rows, str(report))
    assert report.kept == len(pairs) and report.kept + report.n_skipped == report.rows
    assert len({p.id for p in pairs}) == len(pairs)
    for p in pairs:
        check_pair(p)
    for examples in report.examples.values():
        assert all(e.startswith(path) for e in examples)
    try:
        strict = list(read_preferences(path, strict=True, **kwargs))
    except BadRowError as e:
        assert report.n_skipped > 0
        assert isinstance(e, ValueError) and e.reason in report.skipped
        assert re.match(rf"{re.escape(path)}(:\d+| item \d+| row \d+)?: {e.reason}\b", str(e))
    else:
        assert report.n_skipped == 0 and strict == pairs
    return report


FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_json_lines_every_row_kept_or_counted(tmp_path, fmt, data):
    lines = data.draw(lines_for(fmt))
    path = str(tmp_path / f"{fmt}.jsonl")
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + data.draw(st.sampled_from([b"\n", b""])))
    check_read(path, sum(1 for line in lines if line.strip()), **read_args(fmt))


@pytest.mark.parametrize("fmt", ["hh_rlhf", "ultrafeedback", "pairs"])
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_json_array_every_item_kept_or_counted(tmp_path, fmt, data):
    rows = [data.draw(mutated(good_row(fmt, data.draw(EDGE_TEXT), data.draw(EDGE_TEXT),
                                       data.draw(EDGE_TEXT), "x")))
            for _ in range(data.draw(st.integers(0, 6)))]
    path = str(tmp_path / f"{fmt}.json")
    with open(path, "wb") as f:
        f.write(json.dumps(rows).encode("utf-8", "surrogatepass"))
    check_read(path, len(rows), **read_args(fmt))


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), fmt=st.sampled_from(FORMATS))
def test_gzip_rows_and_corrupt_gzip(tmp_path_factory, data, fmt):
    d = tmp_path_factory.mktemp("gz")
    lines = data.draw(lines_for(fmt))
    blob = gzip.compress(b"\n".join(lines) + b"\n", mtime=0)
    path = str(d / "rows.jsonl.gz")
    with open(path, "wb") as f:
        f.write(blob)
    check_read(path, sum(1 for line in lines if line.strip()), **read_args(fmt))
    # truncated gzip (a copy cut short) and random bytes: BadFileError naming the file
    cut = data.draw(st.integers(1, len(blob) - 1))
    for name, payload in (("cut.jsonl.gz", blob[:cut]),
                          ("noise.jsonl.gz", b"\x1f\x8b" + data.draw(st.binary(max_size=64)))):
        bad = str(d / name)
        with open(bad, "wb") as f:
            f.write(payload)
        report = ReadReport()
        try:
            list(read_preferences(bad, report=report, **read_args(fmt)))
        except BadFileError as e:
            assert isinstance(e, ValueError) and str(e).startswith(f"{bad}: cannot read")
        else:  # only possible if the cut kept a whole gzip member (never for a real cut)
            assert report.kept + report.n_skipped == report.rows


# ------------------------------------------------------------------- parquet
def column_values(kind, n, draw):
    if kind == "text":
        return [draw(st.one_of(st.none(), EDGE_TEXT.filter(
            lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)))) for _ in range(n)]
    if kind == "binary":
        return [draw(st.binary(max_size=12)) for _ in range(n)]
    if kind == "int":
        return [draw(st.one_of(st.none(), st.integers(-3, 3))) for _ in range(n)]
    if kind == "float":
        return [draw(st.floats(allow_nan=True)) for _ in range(n)]
    if kind == "messages":
        role = st.sampled_from(["user", "assistant", "system", "robot", ""])
        return [[{"role": draw(role), "content": draw(st.text(max_size=8))}
                 for _ in range(draw(st.integers(0, 3)))] for _ in range(n)]
    if kind == "summaries":
        return [[{"text": draw(st.text(max_size=8))} for _ in range(draw(st.integers(0, 3)))]
                for _ in range(n)]
    if kind == "info":
        return [{"id": draw(st.text(max_size=4)), "post": draw(st.text(max_size=8))}
                for _ in range(n)]
    raise AssertionError(kind)


PARQUET_COLUMNS = {
    "hh_rlhf": ["chosen", "rejected"],
    "tldr": ["info", "summaries", "choice"],
    "ultrafeedback": ["prompt", "prompt_id", "chosen", "rejected"],
    "parquet": ["prompt", "chosen", "rejected", "id"],
}
KINDS = ["text", "binary", "int", "float", "messages", "summaries", "info"]


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), fmt=st.sampled_from(sorted(PARQUET_COLUMNS)))
def test_parquet_any_column_types_kept_or_counted(tmp_path_factory, data, fmt):
    """Each schema column gets a random Arrow type (or goes missing), plus an extra column."""
    n = data.draw(st.integers(0, 6))
    columns = {}
    for name in PARQUET_COLUMNS[fmt] + ["extra"]:
        if data.draw(st.integers(0, 9)) == 0:
            continue  # a missing column
        columns[name] = column_values(data.draw(st.sampled_from(KINDS)), n, data.draw)
    table = pa.table(columns) if columns else pa.table({"unrelated": [1] * n})
    path = str(tmp_path_factory.mktemp("pq") / "rows.parquet")
    pq.write_table(table, path, row_group_size=max(1, data.draw(st.integers(1, 4))))
    check_read(path, n, format=fmt)


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_unreadable_parquet_is_a_clear_error(tmp_path, damage):
    path = str(tmp_path / "rows.parquet")
    pq.write_table(pa.table({"prompt": ["q"] * 50, "chosen": ["a"] * 50, "rejected": ["b"] * 50}),
                   path)
    blob = Path(path).read_bytes()
    payload = {"random": os.urandom(len(blob)), "truncated": blob[:len(blob) // 2],
               "empty": b""}[damage]
    with open(path, "wb") as f:
        f.write(payload)
    with pytest.raises(BadFileError, match=rf"^{re.escape(path)}: cannot read the parquet file"):
        list(read_preferences(path, format="parquet"))


def test_pathological_json_lines_are_counted_not_crashing(tmp_path):
    """Lines that break json.loads in ways other than JSONDecodeError."""
    path = str(tmp_path / "odd.jsonl")
    rows = [b"{}", b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the recursion limit
            b'{"chosen": ' + b"1" * 5000 + b"}",  # over Python's int digit limit
            b'{"chosen": NaN, "rejected": Infinity}', b"\xff\xfe{}", b'"just a string"', b"[1, 2]",
            json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: a",
                        "rejected": "\n\nHuman: q\n\nAssistant: b"}).encode()]
    with open(path, "wb") as f:
        f.write(b"\n".join(rows))
    report = check_read(path, len(rows), format="hh_rlhf")
    assert report.kept == 1 and report.skipped["malformed_json"] == 2


def test_tldr_choice_as_float_is_accepted_and_other_numbers_refused(tmp_path):
    path = str(tmp_path / "tldr.jsonl")
    base = good_row("tldr", "post", "one", "two", "x")
    rows = [dict(base, choice=1.0), dict(base, choice=2), dict(base, choice=0.5),
            dict(base, choice="1"), dict(base, choice=True)]
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    report = check_read(path, 5, format="tldr")
    assert report.kept == 1 and report.skipped["bad_label"] == 4


def test_pairs_records_with_non_list_prompt_columns_are_counted(tmp_path):
    path = str(tmp_path / "pairs.jsonl")
    base = good_row("pairs_tfds", "q", "a", "b", "x")
    rows = [base, dict(base, prompt_roles=5), dict(base, prompt_contents=None, id="pairs:y"),
            dict(base, prompt_roles=["user", "user"], id="pairs:z")]
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    report = check_read(path, 4, format="pairs")
    assert report.kept == 1 and report.n_skipped == 3
