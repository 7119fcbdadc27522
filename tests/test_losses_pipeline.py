"""Loss options through the tiny pipeline's command line, with confidence weights, and the
align config's refusals. The data, annotator and score stages run once, shortened (the
reference is the tiny model itself); tests/test_losses_step.py runs every loss through the
alignment step."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from cwpo_jax import losses
from cwpo_jax.stages import annotator, config as config_lib, prepare, score, sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(output_dir):
    sys.path.insert(0, ROOT)
    from configs import tiny

    cfg = tiny.get_config()
    cfg.output_dir = str(output_dir)
    cfg.data.num_pairs = 64
    cfg.annotator.train.max_steps = 2
    cfg.sft.enabled = False
    cfg.align.methods = ("weak_confidence",)
    cfg.align.train.max_steps = 2
    cfg.align.train.log_every = 1
    return cfg


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    out = tmp_path_factory.mktemp("losses_upstream")
    cfg = tiny_config(out)
    for stage in (prepare, annotator, score, sft):
        stage.run(cfg)
    return out


@pytest.mark.parametrize("fields,message", [
    ({"loss": "sigmoid,nope"}, "align.loss: unknown preference loss 'nope'"),
    ({"loss": "dpo,sigmoid"}, "align.loss: loss 'dpo,sigmoid' names a loss twice"),
    ({"loss": "dpo,sft", "loss_weights": (1.0,)}, "align.loss_weights: (1.0,) must give one"),
    ({"loss": "exo_pair"}, "align.label_smoothing: exo_pair needs label_smoothing > 0"),
    ({"loss": "nca_pair", "f_divergence_type": "forward_kl"},
     "align.f_divergence_type: forward_kl needs losses among"),
    ({"f_divergence_type": "kl"}, "align.f_divergence_type: 'kl' not in"),
    ({"ld_alpha": 1.5}, "align.ld_alpha: must be in [0, 1]"),
    ({"discopop_tau": 0.0}, "align.discopop_tau: must be > 0"),
    ({"loss": "aot"}, "align.loss: aot sorts the batch, so its rows are not pairs and cannot "
                      "take the per-pair weights of align.methods ['weak_confidence']"),
    ({"loss": "sigmoid,aot_unpaired", "methods": ("weak",), "use_weighting": True},
     "align.use_weighting: WPO's per-pair weights cannot apply to aot_unpaired"),
])
def test_bad_loss_options_are_refused_naming_the_field(tmp_path, fields, message):
    """One line per mistake, naming the field, before any compute."""
    cfg = tiny_config(tmp_path)
    for key, value in fields.items():
        cfg.align[key] = value
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.validate(cfg, num_devices=8)


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_every_loss_name_is_a_valid_align_loss(tmp_path, name):
    """align.loss=NAME validates for every name, ours and TRL's: with the confidence weights of
    weak_confidence for the per-pair losses, with unweighted methods for the batch-level ones."""
    cfg = tiny_config(tmp_path)
    cfg.align.loss = name
    cfg.align.label_smoothing = 0.1
    if name in losses.BATCH_LOSSES:
        cfg.align.methods = ("human", "weak")
    config_lib.validate(cfg, num_devices=8)


def test_cli_takes_trl_names_a_weighted_mixture_ld_and_wpo(upstream):
    """--config.align.loss=robust,sft (TRL's names; RPO on robust DPO) with loss_weights,
    ld_alpha and WPO from the command line: the reference pass and the training of
    weak_confidence (confidence weights) both run, and every logged loss is finite."""
    cmd = [sys.executable, "launch/align.py", "--config=configs/tiny.py",
           f"--config.output_dir={upstream}", "--config.data.num_pairs=64",
           "--config.annotator.train.max_steps=2", "--config.sft.enabled=False",
           "--config.align.methods=('weak_confidence',)", "--config.align.train.max_steps=1",
           "--config.align.loss=robust,sft", "--config.align.loss_weights=(1.0,0.5)",
           "--config.align.label_smoothing=0.1", "--config.align.ld_alpha=0.5",
           "--config.align.use_weighting=True", "--config.align.train.log_every=1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.exists(upstream / "align" / "weak_confidence" / "model")
    with open(upstream / "align" / "weak_confidence" / "metrics.jsonl") as f:
        records = [r for r in map(json.loads, f) if "loss" in r]
    assert records and all(math.isfinite(r["loss"]) and r["weights/wpo"] > 0 for r in records)
    assert 0 < records[0]["weights/mean"] < 1  # the pairs carry their confidences
    assert len(os.listdir(upstream / "refcache")) == 1  # the ld_alpha reference sums
