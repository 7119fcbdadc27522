"""The DPO-step benchmark runs end to end on the tiny model and reports every promised field."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import dpo_step  # noqa: E402


def test_dpo_step_benchmark_tiny(capsys):
    result = dpo_step.main(["--model=tiny", "--steps=2", "--batch=2", "--prompt-len=8",
                            "--completion-len=8", "--reference=online", "--lora"])
    for key in ("step_s", "tokens_per_s", "padded_tokens_per_s", "mfu", "peak_rss_mb"):
        assert result[key] > 0, key
    assert result["tokens_per_s"] == 2 * 2 * 16 / result["step_s"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
