"""Config validation before any compute: every bad setting is a one-line error naming the field
(tests/test_pipeline.py and tests/test_configs.py cover a few; this is the full table)."""
import os
import re
import subprocess
import sys

import pytest

from cwpo_jax.stages.config import ConfigError, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(**overrides):
    sys.path.insert(0, ROOT)
    from configs import tiny as preset

    cfg = preset.get_config()
    cfg.output_dir = "/tmp/unused"
    for key, value in overrides.items():
        node = cfg
        *parents, field = key.split(".")
        for p in parents:
            node = node[p]
        node[field] = value
    return cfg


CASES = [
    # (overrides, expected line)
    ({"align.beta": 0.0}, "align.beta: must be > 0, got 0.0"),
    ({"align.beta": -0.5}, "align.beta: must be > 0, got -0.5"),
    ({"align.label_smoothing": 0.5}, "align.label_smoothing: must be in [0, 0.5), got 0.5"),
    ({"align.label_smoothing": -0.1}, "align.label_smoothing: must be in [0, 0.5), got -0.1"),
    ({"data.labelled_fraction": 0.0}, "data.labelled_fraction: 0.0 is not in (0, 1)"),
    ({"data.labelled_fraction": 1.0}, "data.labelled_fraction: 1.0 is not in (0, 1)"),
    ({"data.labelled_fraction": 0.9}, "data.eval_fraction: 0.15 must be in (0, 1) and leave room"),
    ({"data.eval_fraction": 0.0}, "data.eval_fraction: 0.0 must be in (0, 1)"),
    ({"data.labelled_fraction": 0.004},
     "data.labelled_fraction: leaves the labelled split of 96 pairs empty"),
    ({"data.labelled_fraction": 0.5, "data.eval_fraction": 0.495},
     "data.labelled_fraction: leaves the unlabelled split of 96 pairs empty"),
    ({"data.num_pairs": 0}, "data.num_pairs: must be > 0 for data.source=synthetic"),
    ({"data.max_prompt_len": 40}, "data.max_prompt_len: need 0 < max_prompt_len (40) < max_len"),
    ({"align.top_fraction": 0.0}, "align.top_fraction: must be in (0, 1], got 0.0"),
    ({"align.top_fraction": 1.5}, "align.top_fraction: must be in (0, 1], got 1.5"),
    ({"align.loss": "dpoo"}, "align.loss: unknown preference loss 'dpoo'"),
    ({"align.confidence": "c4"}, "align.confidence: 'c4' not in"),
    ({"align.methods": ("weak", "strong")}, "align.methods: 'strong' not in"),
    ({"align.lora_dropout": 1.0}, "align.lora_dropout: must be in [0, 1), got 1.0"),
    ({"score.tau": 0.0}, "score.tau: must be > 0, got 0.0"),
    ({"score.batch_size": 0}, "score.batch_size: must be > 0, got 0"),
    ({"align.train.batch_size": 16, "align.train.micro_batches": 3},
     "align.train.batch_size: 16 is not a positive multiple of micro_batches 3"),
    ({"sft.train.learning_rate": 0.0}, "sft.train.learning_rate: must be > 0"),
    ({"annotator.train.epochs": 0.0}, "annotator.train.epochs: epochs or max_steps must be > 0"),
    ({"annotator.train.compute_dtype": "float16"},
     "annotator.train.compute_dtype: 'float16' is not float32 or bfloat16"),
    ({"sft.train.log_every": 0}, "sft.train.log_every: must be > 0, got 0"),
    ({"align.train.save_every": -1}, "align.train.save_every: must be >= 0"),
    ({"align.train.keep_checkpoints": 0}, "align.train.keep_checkpoints: must be > 0, got 0"),
    ({"align.train.warmup_steps": -1}, "align.train.warmup_steps: must be >= 0, got -1"),
    ({"evaluate.top_p": 0.0}, "evaluate.top_p: must be in (0, 1], got 0.0"),
    ({"evaluate.batch_size": 0}, "evaluate.batch_size: must be > 0, got 0"),
    ({"evaluate.max_new_tokens": 0}, "evaluate.max_new_tokens: must be > 0"),
    ({"data.source": "web"}, "data.source: 'web' is not one of file, synthetic, demo"),
    ({"output_dir": ""}, "output_dir: is required"),
    ({"output_dir": "gs://bucket/run1"}, "output_dir: 'gs://bucket/run1' is an object-store URL"),
    ({"sft.train.remat": "some"}, "sft.train.remat: 'some' is not one of none, full, dots"),
    ({"align.train.frozen_dtype": "fp8"},
     "align.train.frozen_dtype: 'fp8' is not float32 or bfloat16"),
    # devices (8 host devices in these tests)
    ({"mesh.data": 16}, "mesh: 16 devices requested, 8 present"),
    ({"mesh.data": 4, "mesh.fsdp": 2, "mesh.tensor": 2}, "mesh: 16 devices requested, 8 present"),
    ({"mesh.data": -1, "mesh.fsdp": -1},
     "mesh: sizes [-1, -1, 1] must be positive, with at most one -1"),
    ({"mesh.tensor": 0}, "mesh: sizes [-1, 1, 0] must be positive"),
    ({"mesh.fsdp": 3},
     "mesh: sizes [-1, 3, 1]: the fixed axes need 3 devices, which does not divide the 8 present"),
    ({"mesh.fsdp": 16}, "mesh: sizes [-1, 16, 1]: the fixed axes need 16 devices"),
    ({"annotator.train.batch_size": 4},
     "annotator.train.batch_size: micro-batch 4 is not divisible by the data-parallel size 8"),
    ({"sft.train.batch_size": 12, "sft.train.micro_batches": 3},
     "sft.train.batch_size: micro-batch 4 is not divisible by the data-parallel size 8"),
    ({"mesh.data": -1, "mesh.fsdp": 2, "align.train.batch_size": 4, "align.train.micro_batches": 1},
     "align.train.batch_size: micro-batch 4 is not divisible by the data-parallel size 8"),
    ({"score.batch_size": 2},
     "score.batch_size: 2 x 2 rows per scoring batch are not divisible by the data-parallel size 8"),
]


@pytest.mark.parametrize("overrides,line", CASES, ids=[str(c[0]) for c in CASES])
def test_each_bad_setting_is_one_line_naming_the_field(overrides, line):
    with pytest.raises(ConfigError) as e:
        validate(tiny(**overrides), num_devices=8)
    lines = str(e.value).splitlines()
    assert any(x.startswith(line) for x in lines), lines
    field = line.split(":")[0]
    for x in lines:  # every line is "<field>: <what is wrong>"
        assert re.match(r"^[a-z_]+(\.[a-z_]+)*: \S", x), x
    assert all(x.split(":")[0] == field for x in lines if x.startswith(field))


def test_unknown_keys_at_any_depth():
    cfg = tiny()
    cfg.unlock()
    cfg.align.train.lr = 1e-3
    cfg.seeed = 1
    cfg.evaluate.judge = "vader"
    with pytest.raises(ConfigError) as e:
        validate(cfg, num_devices=8)
    assert sorted(str(e.value).splitlines()) == ["align.train.lr: unknown config key",
                                                 "evaluate.judge: unknown config key",
                                                 "seeed: unknown config key"]


def test_several_problems_are_all_listed():
    cfg = tiny(**{"align.beta": 0.0, "score.tau": -1.0, "evaluate.top_p": 2.0})
    with pytest.raises(ConfigError) as e:
        validate(cfg, num_devices=8)
    assert [x.split(":")[0] for x in str(e.value).splitlines()] == [
        "align.beta", "score.tau", "evaluate.top_p"]


def test_the_tiny_and_paper_presets_are_valid():
    validate(tiny(), num_devices=8)
    validate(tiny(), num_devices=1)
    validate(tiny(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}), num_devices=8)


def test_cli_refuses_a_mesh_larger_than_the_devices_before_any_compute(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", CWPO_COMPILATION_CACHE="")
    out = subprocess.run([sys.executable, "launch/pipeline.py", "--config=configs/tiny.py",
                          f"--config.output_dir={tmp_path}", "--config.mesh.data=8"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-2:] == ["invalid config:",
                                                    "mesh: 8 devices requested, 4 present"]
    assert not os.listdir(tmp_path)
