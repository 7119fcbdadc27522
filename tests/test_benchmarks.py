"""The DPO-step benchmark runs end to end on the tiny model and reports every promised field."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.sh")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import dpo_step  # noqa: E402
import jax  # noqa: E402


def test_dpo_step_benchmark_tiny(capsys):
    result = dpo_step.main(["--model=tiny", "--steps=2", "--batch=2", "--prompt-len=8",
                            "--completion-len=8", "--reference=online", "--lora"])
    for key in ("step_s", "tokens_per_s", "padded_tokens_per_s", "mfu", "peak_rss_mb"):
        assert result[key] > 0, key
    assert result["tokens_per_s"] == 2 * 2 * 16 / result["step_s"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
    # Steady-state memory: the window after the compiling step lies within the whole run's.
    if result["step_peak_note"] is None:
        assert 0 < result["resident_before_steps_mb"] <= result["step_peak_rss_mb"]
        assert result["step_peak_rss_mb"] <= result["peak_rss_mb"]
    else:
        assert result["step_peak_rss_mb"] is None
    assert result["xla_alias_mb"] > 0 and result["xla_temp_mb"] > 0  # the state is donated


def test_step_window_falls_back_without_clear_refs(monkeypatch):
    """Where /proc/self/clear_refs cannot be written the step peak is None, with the reason."""
    import builtins

    import process_memory

    real_open = builtins.open

    def no_clear_refs(path, *a, **k):
        if str(path).endswith("clear_refs"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_clear_refs)
    window = process_memory.StepWindow()
    window.open()
    window.close()
    fields = window.fields()
    assert fields["step_peak_rss_mb"] is None
    assert "clear_refs not writable" in fields["step_peak_note"]
    assert window.process_peak_mb > 0


def test_dpo_step_layouts_compute_the_same_loss():
    """Packed rows (prefix sharing, response-only head) and separate rows: same loss; packed
    computes fewer FLOPs, so its MFU by TRL's 6N count exceeds its MFU by computed FLOPs."""
    common = ["--model=tiny", "--steps=1", "--batch=2", "--prompt-len=8", "--completion-len=4",
              "--reference=online"]
    packed = dpo_step.main(common + ["--layout=packed"])
    rows = dpo_step.main(common + ["--layout=rows"])
    assert abs(packed["loss"] - rows["loss"]) < 1e-5
    assert packed["mfu_6n"] > packed["mfu"] and rows["mfu_6n"] == rows["mfu"]


def test_dpo_step_scan_layers_computes_the_same_losses():
    """--scan-layers (one scanned layer body) with an online, stacked reference and LoRA: the
    same first loss and loss after the updates as the unrolled layers."""
    common = ["--model=tiny", "--steps=2", "--batch=2", "--prompt-len=8", "--completion-len=4",
              "--reference=online", "--lora"]
    unrolled = dpo_step.main(common)
    scanned = dpo_step.main(common + ["--scan-layers"])
    assert scanned["scan_layers"] and not unrolled["scan_layers"]
    for key in ("first_loss", "loss"):
        assert abs(scanned[key] - unrolled[key]) < 1e-5, key
    assert 0 < scanned["compile_s"] <= scanned["first_step_s"]


def test_llama1b_config_is_about_a_billion_parameters():
    """The accelerator benchmark's model, built abstractly (no weights allocated)."""
    from flax import nnx

    model = nnx.eval_shape(lambda: dpo_step.load_model("llama1b", "bfloat16"))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 1.0e9 < n < 1.2e9, n


def test_gpu_script_dry_run_reports_every_variant(tmp_path):
    """benchmarks/gpu.sh on CPU with the tiny model: one named JSON line per variant, the
    library versions, and a log, in at most the 8 files a device run can bring back."""
    env = dict(os.environ, MODEL="tiny", STEPS="1", BATCH="2", PROMPT_LEN="8",
               COMPLETION_LEN="4", OUT_DIR=str(tmp_path), PYTHON=sys.executable)
    done = subprocess.run(["bash", GPU_SCRIPT], env=env, check=True, capture_output=True,
                          text=True, timeout=600)
    assert sorted(os.listdir(tmp_path)) == ["log.txt", "results.jsonl", "versions.txt"]
    # The measured-against-plan summary; on CPU there is no GPU to plan for.
    assert "plan roofline s" in done.stdout
    assert "no plan target for device 'cpu'" in done.stdout
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in results] == [
        "packed_cached", "rows_cached", "packed_online", "packed_cached_remat",
        "packed_cached_scan"]
    assert all(r["dtype"] == "bfloat16" and r["mfu"] > 0 for r in results)
    assert results[-1]["scan_layers"] and results[-2]["remat"]
    assert (tmp_path / "versions.txt").read_text().startswith("jax ")


def test_gpu_script_stops_on_a_failing_variant(tmp_path):
    env = dict(os.environ, MODEL=str(tmp_path / "no_model"), STEPS="1", OUT_DIR=str(tmp_path),
               PYTHON=sys.executable)
    done = subprocess.run(["bash", GPU_SCRIPT], env=env, capture_output=True, timeout=600)
    assert done.returncode != 0
    assert (tmp_path / "results.jsonl").read_text() == ""
    assert "model directory not found" in (tmp_path / "log.txt").read_text()
