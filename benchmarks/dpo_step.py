"""Steady-state DPO train step: tokens/s, MFU against a matmul peak measured in the same process,
memory. Prints a table and one final JSON line.

python benchmarks/dpo_step.py --model=smollm2|tiny|llama1b|PATH --batch=4 --prompt-len=32 \
    --completion-len=32 --steps=8 [--reference=cached|online] [--logprobs=chunked|plain] \
    [--dtype=float32|bfloat16] [--lora] [--layout=packed|rows] [--remat] [--scan-layers] \
    [--heap=release|keep] [--profile=DIR]

llama1b: a random ~1.1B Llama-shaped model (TinyLlama's shape) for accelerator runs
(benchmarks/gpu.sh).

Work per step: `batch` pairs, each a chosen and a rejected sequence of prompt-len + completion-len
real tokens (no padding), full fine-tuning unless --lora. Tokens are counted the way TRL counts
them: real tokens of both sequences, prompt included, whatever the layout. --reference=cached
reads constant reference log-probs from the batch; online computes them every step with a frozen
copy of the initial policy (a jitted forward right before the train step, timed with it).

--layout=packed (the align stage's default): one row per pair, prompt + chosen + rejected, so the
prompt runs once, and the LM head projects response positions only. --layout=rows: chosen and
rejected as separate rows, every position through the LM head (what TRL does).

MFU counts the FLOPs the step really computes: 6 N_body per token through the layers and 6 N_head
per position through the LM head (4 N with frozen LoRA bases), + 2 N per token for an online
reference forward; N counts matmul parameters (lookup tables excluded, the tied LM head
included). mfu_6n is TRL's count, 6 N (8 N online) per counted token, which credits packed rows
with the work they avoid.

Memory (host RSS in MiB; on CPU it holds everything, on an accelerator the host side only):
- peak_rss_mb: the whole process's high-water mark (ru_maxrss), so it includes the matmul-peak
  probe, model loading (and a GGUF's dequantisation), the optimizer init and compilation.
- step_peak_rss_mb: the high-water mark of the timed steps alone. After the first (compiling)
  step the kernel's mark is reset to the current RSS ("5" > /proc/self/clear_refs) and VmHWM is
  read after the last timed step; resident_before_steps_mb is VmRSS right after that reset (0.5 s
  after the first step, once its temporaries are unmapped): weights, optimizer state, batch, the
  compiled program, the runtime, and heap that glibc keeps after frees. None, with the reason in
  step_peak_note, where clear_refs is not writable (see process_memory.py).
  --heap=release (the default) hands freed heap back to the OS after loading and again right
  after the first step, before the reset, as the training loop does (cwpo_jax.host_memory).
- xla_*_mb: XLA's own accounting of the compiled step (memory_analysis): its arguments (state,
  frozen weights, batch), outputs, the part of the outputs aliased to donated arguments, and
  temporaries (gradients, activations and every other buffer live within the step).
- peak_device_mb: the accelerator allocator's high-water mark (0 on CPU).

--profile=DIR: 3 more steps under jax.profiler (trace in DIR, the compiled HLO in
DIR/train_step.hlo.txt), then a table of the step's XLA instructions by time with what each does
and each matmul's GFLOP/s, and the totals by kind (benchmarks/op_profile.py); the JSON line gets
`profile` ({wall_ms, by_kind_ms, trace_dir}).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cwpo_jax import assets, losses, models, sharding  # noqa: E402
from cwpo_jax.host_memory import release_freed_heap  # noqa: E402
from cwpo_jax.data import TokenizedPair, collate_packed_pairs  # noqa: E402
from cwpo_jax.train import optim, steps, tasks  # noqa: E402
from cwpo_jax.train.metrics import measure_matmul_peak  # noqa: E402
from cwpo_jax.train.state import init_train_state, split_model  # noqa: E402

from process_memory import StepWindow  # noqa: E402


# A ~1.1B Llama-shaped config (TinyLlama-1.1B's shape) with random weights, for accelerators.
LLAMA_1B = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=2048,
                intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, max_position_embeddings=4096, rope_theta=10000.0,
                rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu",
                vocab_size=32000)


def load_model(spec: str, dtype: str, remat: bool = False):
    if spec in ("tiny", "llama1b"):
        from cwpo_jax.models.checkpoint_hf import build_config
        from cwpo_jax.stages.common import TINY_CONFIGS

        hf = LLAMA_1B if spec == "llama1b" else dict(TINY_CONFIGS["llama"], vocab_size=512)
        cfg, cls = build_config(hf, dtype=dtype, param_dtype="float32", remat=remat)
        return cls(cfg, rngs=nnx.Rngs(0))
    return models.from_pretrained(checkpoint_path(spec), dtype=dtype, param_dtype="float32",
                                  remat=remat)


def checkpoint_path(spec: str) -> str:
    """The HF folder a non-tiny model spec loads from (compare_trl.py hands it to TRL)."""
    path = assets.resolve("pkg:smollm2" if spec == "smollm2" else spec)
    if path.endswith(".gguf"):  # dequantise once into an HF folder, as the pipeline does
        name = os.path.splitext(os.path.basename(path))[0]
        cache = os.path.join(tempfile.gettempdir(), "cwpo_bench_" + name)
        if not os.path.exists(cache):
            models.save_pretrained(models.from_pretrained(path), cache)
        path = cache
    return path


def make_batch(batch: int, prompt_len: int, completion_len: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = prompt_len + completion_len
    prompt = rng.integers(1, vocab, (batch, prompt_len))
    ids = np.concatenate([np.concatenate([prompt, rng.integers(1, vocab, (batch, completion_len))],
                                         1),
                          np.concatenate([prompt, rng.integers(1, vocab, (batch, completion_len))],
                                         1)]).astype(np.int32)
    response = np.zeros_like(ids)
    response[:, prompt_len:] = 1
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "response_mask": response,
            "weights": np.ones(batch, np.float32), "valid": np.ones(batch, np.float32),
            "ref_logps": np.full(2 * batch, -float(completion_len) * 5, np.float32)}, 2 * batch * t


def pack(rows: dict, prompt_len: int) -> dict:
    """The same pairs as one packed row each (data.collate_packed_pairs)."""
    ids = rows["input_ids"]
    b = ids.shape[0] // 2
    pairs = [TokenizedPair(ids[i, :prompt_len], ids[i, prompt_len:], ids[b + i, prompt_len:])
             for i in range(b)]
    completion = ids.shape[1] - prompt_len
    packed = collate_packed_pairs(pairs, range(b), batch_size=b,
                                  buckets=(prompt_len + 2 * completion,),
                                  response_len=completion, pad_id=0)
    packed.pop("pair_index")
    return {**packed, **{k: rows[k] for k in ("valid", "ref_logps")}}


def step_flops(n_body: int, n_head: int, *, batch: int, prompt_len: int, completion_len: int,
               layout: str, lora: bool, online: bool) -> float:
    """FLOPs one step computes (see the module docstring)."""
    if layout == "packed":
        body, head = batch * (prompt_len + 2 * completion_len), 2 * batch * completion_len
    else:
        body = head = 2 * batch * (prompt_len + completion_len)
    forward = 2.0 * (n_body * body + n_head * head)
    return forward * (2.0 if lora else 3.0) + (forward if online else 0.0)


def xla_memory_mb(compiled) -> dict:
    """XLA's memory_analysis of a compiled step in MiB (empty where the backend gives none)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    return {f"xla_{name}_mb": getattr(analysis, f"{name}_size_in_bytes") / 2**20
            for name in ("argument", "output", "alias", "temp")}


def profile_step(compiled, state, frozen, batch, trace_dir: str, calls: int = 3):
    """Trace `calls` train steps (the compiled step alone: an online reference's forward is
    another program, whose instruction names would collide) and print the op table.
    Returns ({"wall_ms", "by_kind_ms", "trace_dir"}, the state after the traced steps)."""
    import op_profile

    holder = [state]

    def call():
        holder[0], metrics = compiled(holder[0], frozen, batch)
        jax.block_until_ready(metrics)

    hlo = compiled.as_text()
    os.makedirs(trace_dir, exist_ok=True)
    with open(os.path.join(trace_dir, "train_step.hlo.txt"), "w") as f:
        f.write(hlo)
    rows, wall_s = op_profile.profile(call, hlo, calls=calls, trace_dir=trace_dir)
    print(op_profile.format_table(rows, wall_s, calls=calls))
    summary = {"wall_ms": wall_s * 1e3, "trace_dir": trace_dir,
               "by_kind_ms": op_profile.summarize(rows)}
    return summary, holder[0]


def plan_prediction(target_name: str, step_fn, args, shardings, *, flops: float) -> dict:
    """What launch/plan.py predicts for this train step on `target_name` (one device): the
    compiler's peak memory and the roofline bound max(FLOPs / peak, state bytes / bandwidth),
    from a deviceless compile of the same step function at the same shapes."""
    from jax.sharding import NamedSharding

    from cwpo_jax.plan import programs, targets

    if target_name == "auto":
        kind = jax.devices()[0].device_kind.lower()
        chip = next((c for c in ("h200", "h100", "a100") if c in kind), None)
        if chip is None:
            return {"plan_note": f"no plan target for device {kind!r}"}
        target_name = f"gpu:{chip}:1x1x1"
    target = targets.parse_target(target_name)
    plan_mesh = sharding.make_mesh(1, 1, 1, devices=targets.devices(target)[:1])
    # The same specs on the target's device: the state's shardings, and the batch's own.
    state_sh, frozen_sh, batch_sh = (
        jax.tree.map(lambda s: NamedSharding(plan_mesh, s.spec), sh)
        for sh in (*shardings, jax.tree.map(lambda x: x.sharding, args[2])))
    state, frozen, batch = (programs._abstract(tree, sh) for tree, sh in
                            zip(args, (state_sh, frozen_sh, batch_sh)))
    jitted = steps.jit_train_step(step_fn, plan_mesh, state_sh, frozen_sh)
    program = programs.compile_lowered(
        programs.Program("train step", "benchmark", tokens=0, flops=flops, devices=1),
        lambda: jitted.lower(state, frozen, batch))
    if program.error:
        return {"plan_target": target.name, "plan_error": program.error}
    state_bytes = program.memory["argument"]
    chip = target.chip
    return {"plan_target": target.name, "plan_peak_mb": program.memory["peak"] / 2**20,
            "plan_roofline_step_s": max(flops / chip.peak_bf16_flops,
                                        state_bytes / chip.memory_bandwidth),
            "plan_compile_s": program.compile_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--completion-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--reference", choices=("cached", "online"), default="cached")
    p.add_argument("--logprobs", choices=("chunked", "plain"), default="chunked")
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--layout", choices=("packed", "rows"), default="packed")
    p.add_argument("--remat", action="store_true",
                   help="recompute each layer in the backward pass (less activation memory)")
    p.add_argument("--scan-layers", action="store_true",
                   help="run the decoder layers under one lax.scan (models.stack_layers): one "
                        "layer compiled instead of every layer unrolled")
    p.add_argument("--heap", choices=("release", "keep"), default="release",
                   help="release: hand freed heap back to the OS after loading and after the "
                        "first step, as the training loop does (cwpo_jax.host_memory); keep: "
                        "leave glibc's heap as it is")
    p.add_argument("--plan-target", default="",
                   help="also compile this step for a target of launch/plan.py (one device, e.g. "
                        "gpu:h100:1x1x1; 'auto': this machine's GPU) and report the plan's "
                        "predicted peak memory and roofline step time beside the measured ones")
    p.add_argument("--profile", metavar="DIR",
                   help="after the timed steps, trace 3 more with jax.profiler into DIR and "
                        "print where the train step's time goes (benchmarks/op_profile.py)")
    args = p.parse_args(argv)

    peak = measure_matmul_peak(dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    model = load_model(args.model, args.dtype, remat=args.remat)
    reference = None
    if args.reference == "online":
        reference = nnx.split(nnx.clone(model))  # frozen copy of the initial policy
    if args.lora:
        model = models.apply_lora(model, models.LoRAConfig(), rngs=nnx.Rngs(0))
        model.train()
    if args.scan_layers:
        models.stack_layers(model)
        if reference is not None:
            reference = nnx.split(models.stack_layers(nnx.merge(*reference)))
    from cwpo_jax.train.flops import matmul_params

    n = matmul_params(model, lm_head=True)
    n_head = n - matmul_params(model, lm_head=False)
    flops = step_flops(n - n_head, n_head, batch=args.batch, prompt_len=args.prompt_len,
                       completion_len=args.completion_len, layout=args.layout, lora=args.lora,
                       online=reference is not None)
    flops_6n = (4.0 if args.lora else 6.0) * n + (2.0 * n if reference else 0.0)
    chunk = args.chunk_size if args.logprobs == "chunked" else 0
    pair_loss = losses.pair_loss_fn("dpo", beta=0.5)

    def task(m, batch):
        return tasks.preference_task(m, batch, pair_loss=pair_loss, beta=0.5, chunk_size=chunk)

    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    reference_logps = None
    if reference is not None:
        ref_graphdef, ref_weights = reference

        # The reference forward runs right before each train step, timed with it. Its weights
        # are an argument: closed over by the train step, jit embedded them in the program as
        # constants (measured with SmolLM2: 1.7 GB more RSS for its 0.5 GB of weights).
        @functools.partial(jax.jit, out_shardings=sharding.batch_sharding(mesh, 2, 1))
        def reference_logps(weights, batch):
            micro = jax.tree.map(lambda x: x[0], batch)  # one micro-batch
            model = nnx.merge(ref_graphdef, weights)
            return tasks.pair_logprobs(model, micro, chunk_size=chunk)[0][None]

    def run_batch(batch, reference_logps):
        """The train step's input: with an online reference, its log-probs added."""
        if reference_logps is None:
            return batch
        return {**batch, "ref_logps": reference_logps(ref_weights, batch)}

    def run(state, batch):
        """One step: with an online reference, its log-probs, then the train step."""
        return compiled(state, frozen, run_batch(batch, reference_logps))

    parts = split_model(model, models.trainable_filter(model))
    optimizer, _ = optim.make_optimizer(learning_rate=1e-6, total_steps=args.steps + 2)
    state, frozen, state_sh, frozen_sh = init_train_state(parts, optimizer, mesh)
    step_fn = steps.make_train_step(
        parts.graphdef, task, optimizer,
        compute_dtype=jnp.bfloat16 if args.dtype == "bfloat16" else None)
    step = steps.jit_train_step(step_fn, mesh, state_sh, frozen_sh)
    vocab = model.config.vocab_size
    del model, parts  # the step owns copies; keep one set of weights in memory
    if args.heap == "release":
        release_freed_heap()
    host, tokens = make_batch(args.batch, args.prompt_len, args.completion_len, vocab)
    if args.layout == "packed":
        host = pack(host, args.prompt_len)
    batch = sharding.shard_batch({k: v[None] for k, v in host.items()}, mesh, leading=1)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()  # one compilation, for both uses
    compile_only_s = time.perf_counter() - start
    state, metrics = run(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    first_loss = float(metrics["loss"])  # before any update: the forward pass alone decides it
    # The CPU runtime unmaps a step's temporaries just after its outputs are ready (~0.1 s for
    # 1 GB): let that finish so resident_before_steps_mb holds what stays between steps.
    time.sleep(0.5)
    if args.heap == "release":
        release_freed_heap()
    window = StepWindow()
    window.open()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = run(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    window.close()
    step_s = float(np.median(times))
    profile = None
    if args.profile:
        profile, state = profile_step(compiled, state, frozen, run_batch(batch, reference_logps),
                                      args.profile)
    result = {
        "model": args.model, "batch": args.batch, "prompt_len": args.prompt_len,
        "completion_len": args.completion_len, "reference": args.reference,
        "logprobs": args.logprobs, "dtype": args.dtype, "lora": args.lora, "layout": args.layout,
        "matmul_params": n, "step_s": step_s, "tokens_per_s": tokens / step_s,
        "padded_tokens_per_s": tokens / step_s,  # synthetic batches carry no padding
        "mfu": flops / step_s / peak, "mfu_6n": flops_6n * tokens / step_s / peak,
        "peak_flops": peak,
        "first_step_s": compile_s, "compile_s": compile_only_s, "first_loss": first_loss,
        "loss": float(metrics["loss"]),
        "peak_rss_mb": window.process_peak_mb, **window.fields(), **xla_memory_mb(compiled),
        "device": str(jax.devices()[0]), "remat": args.remat, "scan_layers": args.scan_layers,
        "profile": profile,
        # Accelerators report their allocator's high-water mark; the CPU client reports none.
        "peak_device_mb": (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use",
                                                                      0) / 2**20,
    }
    if args.plan_target:
        result.update(plan_prediction(args.plan_target, step_fn, (state, frozen, batch),
                                      (state_sh, frozen_sh), flops=flops))
    for key in ("step_s", "plan_roofline_step_s", "peak_device_mb", "plan_peak_mb",
                "tokens_per_s", "mfu", "mfu_6n", "peak_flops", "compile_s",
                "first_step_s", "peak_rss_mb", "step_peak_rss_mb", "resident_before_steps_mb",
                "xla_temp_mb"):
        value = result.get(key)
        print(f"{key:>24}: " + (f"{value:.4g}" if value is not None else
                               f"None ({result.get('step_peak_note') or 'not reported'})"))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
