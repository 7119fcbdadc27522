"""The README for users: its loss snippet runs and computes CW-DPO (weak-label order, confidence
weights), its set-up block stays two commands with the test command .ci/run runs, it stays short
and names no commit."""
import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def block(section: str, lang: str) -> str:
    """The first ```lang block after the heading `## section`."""
    text = readme()
    start = text.index(f"\n## {section}\n")
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    return match.group(1)


def test_the_loss_snippet_runs_and_weights_the_weak_order_by_confidence():
    ns: dict = {}
    exec(compile(block("The losses in your JAX code", "python"), "README.md", "exec"), ns)
    # Independently, in float64: log-probs of the rows, each pair in the annotator's order,
    # DPO at beta 0.1 against the constant reference, weighted by C1 = 2 sigmoid(|gap|) - 1.
    score_a = np.array([1.5, -0.4, 0.2, 2.0])
    score_b = np.array([0.3, 0.6, 0.1, -1.0])
    assert np.array_equal(np.asarray(ns["t"].swap), score_b > score_a)
    assert (score_b > score_a).any()  # the snippet has a pair whose order the annotator swaps
    lm_head = 0.1 * np.asarray(ns["jax"].random.normal(ns["k3"], (16, 50)), np.float64)
    logits = np.asarray(ns["hidden"], np.float64) @ lm_head
    logits -= logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits).sum(-1))
    picked = np.take_along_axis(logits, np.asarray(ns["targets"])[..., None], -1)[..., 0]
    logp = ((picked - logz) * np.asarray(ns["mask"])).sum(-1)
    chosen, rejected = logp[:4], logp[4:]
    swap = score_b > score_a
    chosen, rejected = np.where(swap, rejected, chosen), np.where(swap, chosen, rejected)
    h = (chosen + 60.0) - (rejected + 60.0)
    per_pair = np.log1p(np.exp(-0.1 * h))
    weight = 2 / (1 + np.exp(-np.abs(score_a - score_b))) - 1
    np.testing.assert_allclose(float(ns["loss"]), np.mean(weight * per_pair), rtol=1e-4)
    assert ns["grad"].shape == (16, 50) and np.isfinite(np.asarray(ns["grad"])).all()


def test_the_set_up_block_is_two_commands_and_ci_runs_its_test_command():
    commands = [line for line in block("Set-up", "bash").splitlines() if line.strip()]
    assert len(commands) == 2
    assert commands[0].endswith("python launch/pipeline.py --config=configs/demo_quick.py "
                                "--config.output_dir=runs/demo_quick")
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        assert commands[1] in f.read().splitlines()


def test_the_readme_is_short_and_names_no_commit():
    text = readme()
    assert len(text.splitlines()) < 220
    assert not re.findall(r"[0-9a-f]{7,}", text)


def test_licence_and_citation_files():
    import yaml

    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        licence = f.read()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    with open(os.path.join(ROOT, "CITATION.cff"), encoding="utf-8") as f:
        cff = yaml.safe_load(f)
    assert cff["license"] == "Apache-2.0"
    assert cff["preferred-citation"]["url"] == "https://arxiv.org/abs/2603.04968"


def test_docs_name_no_missing_file():
    """Relative links of the README and the reference docs point at files that exist."""
    for doc in ("README.md", "docs/cli.md", "docs/method.md", "docs/config.md"):
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), target))
            assert os.path.exists(path), f"{doc} links to {target}, which does not exist"
