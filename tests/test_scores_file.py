import json

import numpy as np
import pytest

from cwpo_jax import scores


def write(tmp_path, ids=("p1", "p2", "p3"), a=(1.0, -1.0, 0.0), b=(0.0, 2.0, 0.0)):
    path = str(tmp_path / "scores.jsonl")
    scores.write_scores(path, list(ids), np.asarray(a), np.asarray(b), annotator={"sha": "abc"})
    return path


def test_round_trip_and_reorder(tmp_path):
    path = write(tmp_path)
    out = scores.read_scores(path, expected_ids=["p3", "p1", "p2"], expected_annotator={"sha": "abc"})
    assert out["ids"] == ["p3", "p1", "p2"]
    np.testing.assert_array_equal(out["weak_label"], [True, True, False])  # tie goes to a
    np.testing.assert_allclose(out["c1"], np.tanh(np.abs([0.0, 1.0, 3.0]) / 2))
    np.testing.assert_allclose(out["score_b"], [0.0, 0.0, 2.0])


def rewrite(path, fn):
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    lines = fn(lines)
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n")


@pytest.mark.parametrize("corrupt,message", [
    (lambda L: L[:1] + [dict(L[1], c1=1.5)] + L[2:], "outside"),
    (lambda L: L[:1] + [dict(L[1], score_a=float("nan"))] + L[2:], "non-finite"),
    (lambda L: L + [L[1]], "duplicated"),
    (lambda L: L[:-1], "truncated"),
    (lambda L: L[:1] + [dict(L[1], weak_label=False)] + L[2:], "disagrees"),
    (lambda L: L[:1] + [{"id": "p1"}] + L[2:], "malformed"),
])
def test_bad_files_are_refused(tmp_path, corrupt, message):
    path = write(tmp_path)
    rewrite(path, corrupt)
    with pytest.raises(scores.ScoresError, match=message):
        scores.read_scores(path)


def test_other_dataset_or_annotator_refused(tmp_path):
    path = write(tmp_path)
    with pytest.raises(scores.ScoresError, match="do not match the dataset"):
        scores.read_scores(path, expected_ids=["p1", "p2", "p4"])
    with pytest.raises(scores.ScoresError, match="annotator"):
        scores.read_scores(path, expected_annotator={"sha": "other"})


def test_non_finite_scores_never_written(tmp_path):
    with pytest.raises(scores.ScoresError, match="non-finite"):
        write(tmp_path, a=(1.0, np.inf, 0.0))
    assert not (tmp_path / "scores.jsonl").exists()
