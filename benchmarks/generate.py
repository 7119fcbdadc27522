"""KV-cache sampling throughput (cwpo_jax.models.generate, the sampler the pipeline uses to
sample pairs and evaluate policies): new tokens/s per batch size, compile time reported apart.
Prints a table and one final JSON line.

python benchmarks/generate.py --models=tiny,smollm2 --batch-sizes=1,8,32 --prompt-len=32 \
    --new-tokens=64 [--temperature=0.8] [--top-p=0.95] [--repeats=3] [--threads=N]

Each (model, batch size): prompts of `prompt-len` random ids (no padding), temperature 0.8 and
top-p 0.95 by default (the demo's pair sampling; temperature 0 is greedy), no EOS (every row
generates all `new-tokens`). The first call compiles and runs (first_call_s; compile_s =
first_call_s - step_s is the compile share); step_s is the median of `repeats` further calls
with fresh keys, each a prefill of the prompt plus `new-tokens` decode steps. tokens_per_s =
batch x new-tokens / step_s (generated tokens only); ms_per_decode_step = step_s / new-tokens
(one decode step for the whole batch, prefill share included).
--threads pins the process to N cores (XLA sizes its pool from the affinity mask); the default is
every core.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402  (after the sys.path entry above)
from compare_trl import pin_threads  # noqa: E402  (after the sys.path entry above)


def measure(model, batch: int, prompt_len: int, new_tokens: int, repeats: int, *,
            temperature: float, top_p: float) -> dict:
    import jax

    from cwpo_jax import models

    ids = np.random.default_rng(0).integers(1, model.config.vocab_size, (batch, prompt_len))

    def call(seed: int) -> float:
        start = time.perf_counter()
        out = models.generate(model, ids, key=jax.random.key(seed), max_new_tokens=new_tokens,
                              temperature=temperature, top_p=top_p, eos_token_id=[],
                              pad_token_id=0)
        jax.block_until_ready(out)
        if not np.asarray(out.mask).all():
            raise RuntimeError("a row stopped early; the benchmark expects no EOS")
        return time.perf_counter() - start

    first = call(0)
    step_s = float(np.median([call(seed) for seed in range(1, repeats + 1)]))
    return {"batch": batch, "first_call_s": first, "compile_s": max(first - step_s, 0.0),
            "step_s": step_s, "tokens_per_s": batch * new_tokens / step_s,
            "ms_per_decode_step": 1e3 * step_s / new_tokens}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    pin_threads(args.threads)
    import dpo_step

    rows = []
    for spec in args.models.split(","):
        model = dpo_step.load_model(spec, "float32")
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            rows.append({"model": spec, **measure(
                model, batch, args.prompt_len, args.new_tokens, args.repeats,
                temperature=args.temperature, top_p=args.top_p)})
    print(f"{'model':>10} {'batch':>5} {'tokens/s':>9} {'ms/step':>9} {'call (s)':>9} "
          f"{'compile (s)':>11}")
    for r in rows:
        print(f"{r['model']:>10} {r['batch']:>5} {r['tokens_per_s']:>9.1f} "
              f"{r['ms_per_decode_step']:>9.2f} {r['step_s']:>9.3f} {r['compile_s']:>11.2f}")
    result = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
              "temperature": args.temperature, "top_p": args.top_p,
              "repeats": args.repeats, "threads": args.threads, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
