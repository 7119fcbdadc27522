import os
import sys

import pytest

from cwpo_jax.stages.config import ConfigError, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import paper, tiny  # noqa: E402


@pytest.mark.parametrize("dataset", sorted(paper.DATASETS))
@pytest.mark.parametrize("pair", sorted(paper.PAIRS))
def test_paper_configs_validate(dataset, pair):
    cfg = paper.get_config(f"{dataset},{pair}")
    cfg.output_dir = "/tmp/unused"
    validate(cfg, num_devices=8)
    assert cfg.align.beta == 0.5 and cfg.align.lora_rank == 8
    assert cfg.data.labelled_fraction == 0.3


def test_paper_config_rejects_unknown_setting():
    with pytest.raises(ValueError, match="DATASET,PAIR"):
        paper.get_config("imdb,opt")


def test_output_dir_required():
    with pytest.raises(ConfigError, match="output_dir: is required"):
        validate(tiny.get_config())


def test_demo_full_keeps_the_settings_it_was_run_with():
    """demo_full starts from demo_quick, which moved on after it ran (pilot 7)."""
    from configs import demo_full, demo_quick

    full, quick = demo_full.get_config(), demo_quick.get_config()
    assert full.align.beta == 0.5 and full.align.train.learning_rate == 2e-3
    assert tuple(full.align.lora_targets) == ("q_proj", "v_proj") and full.align.lora_layers == ()
    assert full.evaluate.heldout_pairs == 0 and full.data.pair_rule == "best_vs_random"
    assert quick.align.beta == 0.1 and quick.data.pair_rule == "best_vs_rest"
