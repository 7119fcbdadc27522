"""Splits: deterministic in (seed, fractions), independent of input order, disjoint, exact."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from cwpo_jax.data import PreferencePair
from cwpo_jax.data.splits import split_pairs


def make_pairs(n, prompts=None):
    prompts = prompts or n
    return [
        PreferencePair(
            id=f"x:{i}",
            prompt=({"role": "user", "content": f"q{i % prompts}"},),
            chosen=f"a{i}",
            rejected=f"b{i}",
            source="x",
        )
        for i in range(n)
    ]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 60),
    seed=st.integers(-(2**31), 2**31),
    lab=st.floats(0, 1),
    ev=st.floats(0, 1),
    shuffle_seed=st.integers(0, 1000),
)
def test_split_properties(n, seed, lab, ev, shuffle_seed):
    if lab + ev > 1:
        lab, ev = lab / (lab + ev), ev / (lab + ev)
    pairs = make_pairs(n)
    s = split_pairs(pairs, seed=seed, labelled=lab, eval=ev)
    ids = [[p.id for p in part] for part in (s.labelled, s.unlabelled, s.eval)]
    # disjoint and covering
    assert sorted(sum(ids, [])) == sorted(p.id for p in pairs)
    # exact sizes
    assert len(s.eval) == round(n * ev)
    assert len(s.labelled) == min(round(n * lab), n - round(n * ev))
    # input order does not matter, not even for the order inside each split
    shuffled = list(pairs)
    random.Random(shuffle_seed).shuffle(shuffled)
    assert split_pairs(shuffled, seed=seed, labelled=lab, eval=ev) == s


def test_seed_changes_membership_and_eval_is_stable_across_labelled_fraction():
    pairs = make_pairs(200)
    a = split_pairs(pairs, seed=0, labelled=0.3, eval=0.1)
    b = split_pairs(pairs, seed=1, labelled=0.3, eval=0.1)
    assert {p.id for p in a.labelled} != {p.id for p in b.labelled}
    assert a.sizes() == {"labelled": 60, "unlabelled": 120, "eval": 20}
    c = split_pairs(pairs, seed=0, labelled=0.2, eval=0.1)
    assert c.eval == a.eval  # eval prompts do not move when the labelled share changes
    assert {p.id for p in c.labelled} < {p.id for p in a.labelled}


def test_group_by_prompt_keeps_prompts_together():
    pairs = make_pairs(90, prompts=30)  # three comparisons per prompt, as in TL;DR
    s = split_pairs(pairs, seed=3, labelled=0.3, eval=0.2, group_by="prompt")
    keys = [{p.prompt_key() for p in part} for part in (s.labelled, s.unlabelled, s.eval)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert [len(k) for k in keys] == [9, 15, 6]
    assert len(s.eval) == 18


def test_errors():
    with pytest.raises(ValueError, match="duplicate pair id 'x:0'"):
        split_pairs(make_pairs(3) + make_pairs(1), seed=0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        split_pairs(make_pairs(3), seed=0, labelled=0.8, eval=0.3)
    with pytest.raises(ValueError, match="group_by"):
        split_pairs(make_pairs(3), seed=0, group_by="len")
