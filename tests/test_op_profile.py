"""The op profiler labels XLA instructions from the compiled HLO (matmul FLOPs from the shapes)
and attributes a real trace's time to them; dpo_step --profile reports it."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import dpo_step  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import op_profile  # noqa: E402


def _compiled():
    def f(a, b, q, k):
        return jnp.tanh(a @ b).sum() + jnp.einsum("btd,bsd->bts", q, k).max()

    args = (jnp.ones((64, 32)), jnp.ones((32, 48)), jnp.ones((3, 16, 8)), jnp.ones((3, 20, 8)))
    return jax.jit(f).lower(*args).compile(), args


def test_hlo_instructions_count_matmul_flops():
    compiled, _ = _compiled()
    dots = [i for i in op_profile.hlo_instructions(compiled.as_text()).values()
            if i.kind in ("matmul", "batched matmul")]
    flops = sorted(i.flops for i in dots)
    # 2 x M x K x N for the plain matmul, 2 x B x T x S x D for the batched one.
    assert flops == sorted([2.0 * 64 * 32 * 48, 2.0 * 3 * 16 * 20 * 8]), flops
    assert {i.kind for i in dots} == {"matmul", "batched matmul"}


def test_profile_attributes_trace_time(tmp_path):
    compiled, args = _compiled()
    rows, wall_s = op_profile.profile(lambda: jax.block_until_ready(compiled(*args)),
                                      compiled.as_text(), calls=2, trace_dir=str(tmp_path))
    assert wall_s > 0 and rows and all(r.ms_per_call >= 0 for r in rows)
    kinds = op_profile.summarize(rows)
    assert sum(kinds.values()) > 0
    text = op_profile.format_table(rows, wall_s, calls=2)
    assert "ms wall per call" in text and rows[0].name in text


def test_dpo_step_profile_flag(tmp_path, capsys):
    result = dpo_step.main(["--model=tiny", "--steps=1", "--batch=2", "--prompt-len=8",
                            "--completion-len=4", f"--profile={tmp_path}"])
    profile = result["profile"]
    assert profile["wall_ms"] > 0 and profile["by_kind_ms"].get("matmul", 0) > 0
    assert (tmp_path / "train_step.hlo.txt").stat().st_size > 0
    assert "by kind (ms per call)" in capsys.readouterr().out
