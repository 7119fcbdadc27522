"""Scores files that must not be used are refused with a message naming the file, the line and
what is wrong (tests/test_scores_file.py has the basic cases; these add the rest)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cwpo_jax import scores
from cwpo_jax.scores import ScoresError

IDS = ["p1", "p2", "p3"]
ANNOTATOR = {"path": "/run/annotator/model", "sha256": "abc"}


@pytest.fixture
def path(tmp_path):
    p = str(tmp_path / "scores.jsonl")
    scores.write_scores(p, IDS, np.asarray([1.0, -1.0, 0.5]), np.asarray([0.0, 2.0, 0.5]),
                        annotator=ANNOTATOR)
    return p


def edit_rows(path, fn):
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    rows = fn(rows)
    with open(path, "w") as f:
        f.write("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def row(i, **changes):
    return lambda rows: rows[:i] + [dict(rows[i], **changes)] + rows[i + 1:]


ROW_CASES = {
    # name: (edit, expected message after "<path>")
    "inf score": (row(1, score_a=float("inf")), r":2: non-finite score or confidence for id 'p1'"),
    "-inf score": (row(2, score_b=float("-inf")), r":3: non-finite score .* 'p2'"),
    "NaN confidence": (row(3, c1=float("nan")), r":4: non-finite score or confidence .* 'p3'"),
    "negative confidence": (row(1, c1=-0.01), r":2: confidence outside \[0, 1\] for id 'p1'"),
    "c2 above 1": (row(2, c2=1.5), r":3: confidence outside \[0, 1\] for id 'p2'"),
    "c3 below 0": (row(3, c3=-1.0), r":4: confidence outside \[0, 1\]"),
    "duplicated id": (lambda r: r + [r[2]], r":5: id 'p2' duplicated \(first on line 3\)"),
    "duplicated id, other values": (lambda r: r + [dict(r[1], score_a=0.5)], r":5: id 'p1' dup"),
    "id not a string": (row(1, id=17), r":2: malformed row \(TypeError: id is int"),
    "score as string": (row(1, score_a="1.0"), r":2: malformed row \(TypeError: score_a is str"),
    "score as bool": (row(2, score_b=True), r":3: malformed row \(TypeError: score_b is bool"),
    "missing field": (lambda r: r[:1] + [{k: v for k, v in r[1].items() if k != "c2"}] + r[2:],
                      r":2: malformed row \(KeyError: 'c2'\)"),
    "row not an object": (lambda r: r[:2] + [[1, 2]] + r[3:], r":3: malformed row \(TypeError"),
    "weak label as string": (row(1, weak_label="true"), r":2: weak_label 'true' disagrees"),
    "weak label flipped": (row(2, weak_label=True), r":3: weak_label True disagrees .* 'p2'"),
    "blank line inside": (lambda r: r[:2] + [""] + r[2:], r":3: malformed row \(JSONDecodeError"),
    "truncated last line": (lambda r: r[:3] + [json.dumps(r[3])[:20]],
                            r":4: malformed row \(JSONDecodeError"),
    "row missing (truncated file)": (lambda r: r[:3],
                                     r": header says 3 rows, file has 2 \(truncated\?\)"),
    "row added": (lambda r: r + [dict(r[1], id="p9")], r": header says 3 rows, file has 4"),
    "header not JSON": (lambda r: ["{format"] + r[1:], r":1: header is not JSON"),
    "header not an object": (lambda r: [[1]] + r[1:], r":1: header is a list, expected an object"),
    "other format": (lambda r: [dict(r[0], format="cwpo_scores/0")] + r[1:],
                     r":1: format 'cwpo_scores/0', expected 'cwpo_scores/1'"),
    "empty file": (lambda r: [], r": empty scores file"),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_bad_rows_refused_naming_file_line_and_id(path, case):
    edit, message = ROW_CASES[case]
    edit_rows(path, edit)
    if case == "empty file":
        open(path, "w").close()
    with pytest.raises(ScoresError, match="^" + re.escape(path) + message):
        scores.read_scores(path)


def test_not_utf8_is_refused(path):
    with open(path, "ab") as f:
        f.write(b'{"id": "\xff"}\n')
    with pytest.raises(ScoresError, match=re.escape(path) + ": not a UTF-8 text file"):
        scores.read_scores(path)


@pytest.mark.parametrize("expected,message", [
    (["p1", "p2", "p3", "p4"], r"1 ids missing \(e.g. \['p4'\]\), 0 unknown \(e.g. \[\]\)"),
    (["p1", "p2"], r"0 ids missing \(e.g. \[\]\), 1 unknown \(e.g. \['p3'\]\)"),
    (["p1", "p2", "q3"], r"1 ids missing \(e.g. \['q3'\]\), 1 unknown \(e.g. \['p3'\]\)"),
])
def test_scores_for_a_different_dataset_say_which_ids(path, expected, message):
    with pytest.raises(ScoresError, match=re.escape(path) + r": scores do not match the dataset: "
                                          + message + r"; the scores were made for other data"):
        scores.read_scores(path, expected_ids=expected)


def test_scores_by_a_different_annotator_say_which(path):
    other = dict(ANNOTATOR, sha256="def")
    with pytest.raises(ScoresError) as e:
        scores.read_scores(path, expected_annotator=other)
    assert str(e.value) == (f"{path}: written by annotator {ANNOTATOR}, expected {other}; "
                            "rerun the score stage")


def test_same_ids_in_another_order_are_realigned_not_refused(path):
    out = scores.read_scores(path, expected_ids=["p3", "p1", "p2"], expected_annotator=ANNOTATOR)
    assert out["ids"] == ["p3", "p1", "p2"]
    np.testing.assert_array_equal(out["score_a"], [0.5, 1.0, -1.0])


@pytest.mark.parametrize("a,b,message", [
    ([1.0, np.nan, 0.0], [0.0, 0.0, 0.0], "non-finite score for pair 'p2'"),
    ([1.0, 0.0, 0.0], [0.0, -np.inf, 0.0], "non-finite score for pair 'p2'"),
    ([1.0, 0.0], [0.0, 0.0], "3 ids but 2/2 scores"),
])
def test_writer_refuses_bad_scores_and_keeps_the_old_file(path, a, b, message):
    before = Path(path).read_bytes()
    with pytest.raises(ScoresError, match=message):
        scores.write_scores(path, IDS, np.asarray(a), np.asarray(b), annotator=ANNOTATOR)
    assert Path(path).read_bytes() == before
