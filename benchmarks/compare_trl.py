"""The DPO train step of dpo_step.py side by side with TRL's DPOTrainer (PyTorch), same weights,
same token ids, same machine, one invocation. Prints a table and one final JSON line.

python benchmarks/compare_trl.py --model=smollm2|tiny|PATH --batch=4 --prompt-len=32 \
    --completion-len=32 --steps=6 --reference=cached|online [--threads=N] \
    [--logprobs=chunked|plain] [--layout=packed|rows] [--heap=release|keep] [--scan-layers]

Both sides: full fine-tuning in fp32, AdamW (lr 1e-6, grad-norm clip 1.0), sigmoid DPO loss with
beta 0.5, all `batch` pairs in one optimizer step (no accumulation), no activation
checkpointing; each pair is prompt-len + completion-len real tokens per sequence (no padding),
the ids of dpo_step.make_batch. --reference=cached: TRL precomputes the reference log-probs
before training (precompute_ref_log_probs=True), JAX reads constant ones from the batch; online:
both run a frozen reference copy every step (TRL inside training_step; JAX a jitted reference
forward right before the train step, timed with it).

--layout is dpo_step's: `packed` (the default, as the align stage runs) puts each pair in one row
so the prompt runs once; `rows` runs chosen and rejected as separate rows, the same work as TRL.
TRL 1.16 itself projects only completion positions through the LM head (its fused LM head).

JAX side: dpo_step.main in this process. TRL side: a subprocess (`--side=trl`) so that each peak
RSS is its own process's high-water mark. It loads the same HF folder (the GGUF dequantised by
dpo_step, or the tiny model written with cwpo_jax.models.save_pretrained) with transformers and
runs DPOTrainer.train() for steps + 1 optimizer steps. What is timed on the TRL side: the wall
time from the trainer's on_step_begin to its on_step_end callback, i.e. training_step (forward,
backward, DPO loss and TRL's metrics) + gradient clipping + optimizer.step + scheduler step +
zero_grad; the collated batch is already built, logging and saving are off. The first step is
the warm-up; step_s is the median of the rest (JAX: the median after the compiling step).

TRL 1.16 always tokenises text datasets, so a DPOTrainer subclass passes the already tokenised
dataset (prompt_ids / chosen_ids / rejected_ids, what TRL's own tokenisation yields) through
unchanged; no EOS is appended, so both sides see exactly the same tokens. TRL's defaults bf16=True
and gradient_checkpointing=True (activation checkpointing) are turned off to match the JAX step.

Threads: --threads=N pins this process and the TRL subprocess to the first N cores
(sched_setaffinity, before JAX starts: XLA sizes its CPU thread pool from the affinity mask)
and sets torch.set_num_threads(N); the default is every core of the machine. Run it on a quiet
machine: torch's OpenMP threads slow down several-fold when other processes hold the cores
(SmolLM2 forward of 8 x 64 tokens on a busy 2-core box: 1.8 s with 1 thread, 10.6 s with 2),
far more than XLA's pool, so a loaded machine inflates the ratio.

Tokens are counted as TRL counts them: real tokens of the chosen and rejected sequences, prompt
included. ratio = JAX tokens/s / TRL tokens/s.

Memory, each side its own process, in MiB:
- peak_rss_mb: the whole process's high-water mark (JAX: ru_maxrss of this process, which also
  loads the model (the first time, dequantises the GGUF), probes the matmul peak and compiles;
  TRL: VmHWM of the subprocess, which also loads the model(s), precomputes the cached reference
  log-probs and builds the trainer). memory_ratio = JAX peak_rss_mb / TRL peak_rss_mb.
- step_peak_rss_mb: the high-water mark of the timed steps alone, measured the same way on both
  sides (benchmarks/process_memory.py): right after the first step (JAX: the compiling step;
  TRL: the warm-up step, at its on_step_end callback, after optimizer.step and zero_grad) the
  kernel's mark is reset to the current RSS ("5" > /proc/self/clear_refs), and VmHWM is read
  after the last timed step (TRL: at its last on_step_end). resident_before_steps_mb is VmRSS
  right after the reset: weights, optimizer state and what the runtime keeps between steps.
  step_memory_ratio = JAX step_peak_rss_mb / TRL step_peak_rss_mb; None, with the reason in
  step_peak_note, where clear_refs is not writable.
- --heap=release (default): both sides hand the heap they freed back to the OS
  (cwpo_jax.host_memory, glibc's malloc_trim) before the first step and right after it, before
  the reset, as cwpo_jax's training loop does; --heap=keep: neither side does.

mfu_6n is TRL's FLOP count for both sides (6 N per counted token, 8 N online); the JAX side's mfu
counts the FLOPs its layout really computes (dpo_step).
Needs `pip install -r requirements-trl.txt`; cwpo_jax itself never imports torch or trl.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from process_memory import StepWindow  # noqa: E402  (after the sys.path entry above)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--completion-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--reference", choices=("cached", "online"), default="cached")
    p.add_argument("--logprobs", choices=("chunked", "plain"), default="chunked")
    p.add_argument("--layout", choices=("packed", "rows"), default="packed")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--heap", choices=("release", "keep"), default="release",
                   help="both sides: hand freed heap back to the OS before the first step and "
                        "after it (dpo_step.py --heap)")
    # Internal: the TRL subprocess gets the HF folder and the token ids from the parent.
    p.add_argument("--scan-layers", action="store_true",
                   help="JAX side only: layers under one lax.scan (dpo_step.py --scan-layers)")
    p.add_argument("--side", choices=("both", "trl"), default="both")
    p.add_argument("--checkpoint")
    p.add_argument("--ids")
    return p.parse_args(argv)


def pin_threads(threads: int) -> None:
    if threads < os.cpu_count():
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    os.environ["OMP_NUM_THREADS"] = str(threads)


def peak_rss_mb() -> float:
    """This process's own high-water RSS. ru_maxrss is not used here: a process spawned with
    vfork + exec inherits its parent's maximum in ru_maxrss."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def export(spec: str, directory: str) -> str:
    """The HF folder both sides load: dpo_step's GGUF conversion or the given folder, or for
    `tiny` dpo_step's seeded tiny model written with save_pretrained."""
    import dpo_step

    from cwpo_jax import models

    if spec != "tiny":
        return dpo_step.checkpoint_path(spec)
    models.save_pretrained(dpo_step.load_model("tiny", "float32"), directory)
    return directory


def trl_side(args) -> dict:
    """One TRL DPO run on the ids in args.ids; returns the TRL side's result fields."""
    import datasets
    import torch
    import transformers
    import trl
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from cwpo_jax.host_memory import release_freed_heap

    torch.set_num_threads(args.threads)
    ids = np.load(args.ids)
    b, p = args.batch, args.prompt_len
    rows = {"prompt_ids": [r[:p].tolist() for r in ids[:b]],
            "chosen_ids": [r[p:].tolist() for r in ids[:b]],
            "rejected_ids": [r[p:].tolist() for r in ids[b:]]}
    tokens = sum(len(pr) + len(c) + len(pr) + len(r) for pr, c, r in zip(*rows.values()))

    class PretokenizedDPOTrainer(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already TRL's tokenised columns

    class StepTimer(transformers.TrainerCallback):
        """Times each optimizer step; the memory window opens after the warm-up step and is
        read after each later one."""

        def __init__(self):
            self.times, self.start = [], 0.0
            self.window = StepWindow(process_peak=peak_rss_mb)

        def on_step_begin(self, *_, **__):
            if not self.times and args.heap == "release":
                release_freed_heap()  # after loading and the reference precompute
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.start)
            if len(self.times) == 1:
                if args.heap == "release":
                    release_freed_heap()
                self.window.open()
            else:  # VmHWM only grows after the reset: the read after the last step counts
                self.window.close()

    # The ids are given, so the tokenizer only supplies a pad id (no padding happens).
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<pad>": 0}, unk_token="<pad>")),
        pad_token="<pad>", eos_token="<pad>")
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(
        args.checkpoint, dtype=torch.float32)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        config = trl.DPOConfig(
            output_dir=out, per_device_train_batch_size=b, gradient_accumulation_steps=1,
            max_steps=args.steps + 1, learning_rate=1e-6, lr_scheduler_type="cosine",
            max_grad_norm=1.0, weight_decay=0.0, beta=0.5, loss_type=["sigmoid"],
            precompute_ref_log_probs=args.reference == "cached", max_length=None,
            bf16=False, activation_checkpointing=False, use_cpu=True, seed=0,
            logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True)
        trainer = PretokenizedDPOTrainer(
            model=load(), ref_model=load() if args.reference == "online" else None, args=config,
            train_dataset=datasets.Dataset.from_dict(rows), processing_class=tokenizer,
            callbacks=[timer])
        output = trainer.train()
    step_s = float(np.median(timer.times[1:]))
    return {"step_s": step_s, "tokens_per_s": tokens / step_s, "first_step_s": timer.times[0],
            "tokens_per_step": tokens, "steps_timed": len(timer.times) - 1,
            "mean_loss": float(output.training_loss), "optim": str(config.optim),
            "peak_rss_mb": max(timer.window.process_peak_mb, peak_rss_mb()),
            **timer.window.fields(), "trl": trl.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def run_trl(args, checkpoint: str, ids_path: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--side=trl",
               f"--checkpoint={checkpoint}", f"--ids={ids_path}", f"--model={args.model}",
               f"--batch={args.batch}", f"--prompt-len={args.prompt_len}",
               f"--completion-len={args.completion_len}", f"--steps={args.steps}",
               f"--reference={args.reference}", f"--threads={args.threads}",
               f"--heap={args.heap}"]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def mb(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def step_memory_ratio(jax_result: dict, trl_result: dict) -> float | None:
    """JAX step peak / TRL step peak; None where either side could not measure its own."""
    jax_peak, trl_peak = jax_result["step_peak_rss_mb"], trl_result["step_peak_rss_mb"]
    return None if jax_peak is None or trl_peak is None else jax_peak / trl_peak


def main(argv=None):
    args = parse_args(argv)
    if args.side == "trl":
        result = trl_side(args)
        print(json.dumps(result))
        return result
    pin_threads(args.threads)  # before JAX is imported, when run as a script
    import dpo_step

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = export(args.model, os.path.join(tmp, "model"))
        with open(os.path.join(checkpoint, "config.json")) as f:
            vocab = json.load(f)["vocab_size"]
        host, tokens = dpo_step.make_batch(args.batch, args.prompt_len, args.completion_len,
                                           vocab)
        ids_path = os.path.join(tmp, "ids.npy")
        np.save(ids_path, host["input_ids"])
        # dpo_step prints its own table and JSON: keep this script's stdout to one JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            jax_result = dpo_step.main([
                f"--model={args.model}", f"--batch={args.batch}",
                f"--prompt-len={args.prompt_len}", f"--completion-len={args.completion_len}",
                f"--steps={args.steps}", f"--reference={args.reference}",
                f"--logprobs={args.logprobs}", f"--layout={args.layout}",
                f"--heap={args.heap}"] + (["--scan-layers"] if args.scan_layers else []))
        trl_result = run_trl(args, checkpoint, ids_path)
    if trl_result["tokens_per_step"] != tokens:
        raise RuntimeError(f"TRL counted {trl_result['tokens_per_step']} tokens per step, "
                           f"JAX {tokens}")
    flops_per_token = (8.0 if args.reference == "online" else 6.0) * jax_result["matmul_params"]
    trl_result["mfu_6n"] = flops_per_token * trl_result["tokens_per_s"] / jax_result["peak_flops"]
    jax_keys = ("step_s", "tokens_per_s", "first_step_s", "mfu", "mfu_6n", "peak_rss_mb",
                "step_peak_rss_mb", "resident_before_steps_mb", "step_peak_note", "xla_temp_mb",
                "first_loss", "loss", "matmul_params", "peak_flops", "compile_s", "scan_layers")
    result = {
        "model": args.model, "batch": args.batch, "prompt_len": args.prompt_len,
        "completion_len": args.completion_len, "reference": args.reference,
        "logprobs": args.logprobs, "layout": args.layout, "threads": args.threads,
        "steps": args.steps,
        "tokens_per_step": tokens, "jax": {k: jax_result[k] for k in jax_keys}, "trl": trl_result,
        "ratio": jax_result["tokens_per_s"] / trl_result["tokens_per_s"],
        "memory_ratio": jax_result["peak_rss_mb"] / trl_result["peak_rss_mb"],
        "step_memory_ratio": step_memory_ratio(jax_result, trl_result),
    }
    print(f"{'':>14} {'step (s)':>9} {'tokens/s':>9} {'MFU 6N':>6} {'peak RSS (MB)':>14} "
          f"{'step peak (MB)':>15} {'before steps':>13}")
    for side in ("jax", "trl"):
        r = result[side]
        print(f"{side:>14} {r['step_s']:>9.3f} {r['tokens_per_s']:>9.1f} {r['mfu_6n']:>6.1%} "
              f"{r['peak_rss_mb']:>14.0f} {mb(r['step_peak_rss_mb']):>15} "
              f"{mb(r['resident_before_steps_mb']):>13}")
    ratio = result["step_memory_ratio"]
    print(f"{'jax / trl':>14} {'':>9} {result['ratio']:>9.2f} {'':>6} "
          f"{result['memory_ratio']:>14.2f} {'-' if ratio is None else f'{ratio:.2f}':>15}")
    for side in ("jax", "trl"):
        if result[side]["step_peak_note"]:
            print(f"{side} step peak not measured: {result[side]['step_peak_note']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
