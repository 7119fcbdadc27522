"""The weak annotator's scoring pass: pairs/s and tokens/s of a reward model scoring both
responses of preference pairs. Prints a table and one final JSON line.

python benchmarks/score.py --models=minilm,smollm2 --pairs=256 --batch=16 --length=128 \
    [--threads=N] [--no-torch]

Models: `minilm` (all-MiniLM-L6-v2, mean pooling + a scalar head, the demo's annotator),
`smollm2` (SmolLM2-135M as a reward model: last-token head), `tiny` / `tiny-llama` (random tiny
encoder / decoder, for tests), or an HF folder path. The pass is the pipeline's own:
common.batched_pass over collate_pairs batches of `batch` pairs (2 x batch rows), sorted by
length and cut into the project's buckets (data.batching.default_buckets(length)), one jitted
program per bucket, as stages/annotator.score_pairs runs it.

Workloads, each `pairs` pairs of random ids (values do not change the cost):
  equal     every sequence exactly `length` tokens (prompt length/2 + response length/2): one
            bucket, no padding;
  variable  prompt and response lengths drawn (seeded) from log-normal distributions shaped like
            chat preference data (medians 24 and 48 tokens), clipped to `length`; padded to the
            bucket of each batch's longest row.
Rates are steady state: batched_pass jits afresh on every call, so the first batch of each
bucket compiles and is left out of pairs/s and tokens/s; pass_s is the whole pass, compiles
included (what the pipeline's score stage pays). tokens = real tokens of both sequences of every
pair; padded_share = padded positions / all positions the model ran (padding rows of a short
last batch included).

When torch and transformers are importable, BERT-type models are also run in PyTorch at equal
shapes: transformers' BertModel from the same weights, mean pooling + a linear head, eval mode,
torch.no_grad, the same batches, torch.set_num_threads(threads), timed after one warm-up
batch; jax_over_torch = JAX pairs/s / PyTorch pairs/s. Without torch that column is skipped.
--threads pins the process to N cores (XLA sizes its pool from the affinity mask); the default is
every core.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np
from compare_trl import pin_threads

PROMPT_MEDIAN, RESPONSE_MEDIAN, SIGMA = 24, 48, 0.7


def load_reward_model(spec: str, directory: str):
    """(RewardModel, HF folder of a BERT backbone or None)."""
    from flax import nnx

    from cwpo_jax import assets, models
    from cwpo_jax.models.checkpoint_hf import build_config
    from cwpo_jax.stages.common import TINY_CONFIGS

    if spec in ("tiny", "tiny-llama"):
        family = "bert" if spec == "tiny" else "llama"
        cfg, cls = build_config(dict(TINY_CONFIGS[family], vocab_size=512))
        models.save_pretrained(cls(cfg, rngs=nnx.Rngs(0)), directory)
        path = directory
    elif spec == "smollm2":
        import dpo_step

        path = dpo_step.checkpoint_path("smollm2")
    else:
        path = assets.resolve("pkg:minilm" if spec == "minilm" else spec)
    with open(os.path.join(path, "config.json")) as f:
        is_bert = json.load(f)["model_type"] == "bert"
    overrides = {"pooling": "mean"} if is_bert else {}  # MiniLM was trained with mean pooling
    return models.reward_model_from_pretrained(path, **overrides), path if is_bert else None


def make_pairs(workload: str, n: int, length: int, vocab: int, seed: int = 0):
    from cwpo_jax.data.tokenize import TokenizedPair

    rng = np.random.default_rng(seed)
    if workload == "equal":
        lens = np.full((n, 3), length // 2)
        lens[:, 1:] = length - length // 2
    else:
        prompt = rng.lognormal(np.log(PROMPT_MEDIAN), SIGMA, n)
        response = rng.lognormal(np.log(RESPONSE_MEDIAN), SIGMA, (n, 2))
        lens = np.concatenate([prompt[:, None], response], 1).round().astype(int).clip(1)
        lens[:, 0] = np.minimum(lens[:, 0], length // 2)
        lens[:, 1:] = np.minimum(lens[:, 1:], length - lens[:, :1])
    ids = lambda k: rng.integers(1, vocab, k).astype(np.int32)
    return [TokenizedPair(ids(p), ids(c), ids(r)) for p, c, r in lens]


def jax_pass(rm, pairs, *, batch: int, length: int, cfg) -> dict:
    """One scoring pass, as annotator.score_pairs runs it. batched_pass jits afresh on every
    call, so the first batch of each bucket compiles: the steady-state rates count only the
    other batches (pass_s is the whole pass, compiles included)."""
    from cwpo_jax.data.batching import collate_pairs, default_buckets
    from cwpo_jax.stages import common

    # Pad id 0: padded positions are masked out, their id does not change the cost.
    collate = functools.partial(collate_pairs, pairs, batch_size=batch,
                                buckets=default_buckets(length), pad_id=0)
    fn = lambda model, b: model(b["input_ids"], b["attention_mask"])
    real = total = steady_pairs = steady_tokens = 0
    steady_s, compiled = 0.0, set()
    start = last = time.perf_counter()
    for host, _ in common.batched_pass(rm, fn, lengths=[p.length for p in pairs],
                                       collate=collate, batch_size=batch, cfg=cfg,
                                       name="bench/score", unit="pairs"):
        now, mask = time.perf_counter(), host["attention_mask"]
        real, total = real + int(mask.sum()), total + mask.size
        if mask.shape[1] in compiled:
            steady_s += now - last
            steady_pairs += int((host["pair_index"] >= 0).sum())
            steady_tokens += int(mask.sum())
        compiled.add(mask.shape[1])
        last = now
    if not steady_pairs:
        raise ValueError(f"every batch compiled a bucket: use more than {len(pairs)} pairs")
    return {"pass_s": last - start, "buckets": len(compiled), "steady_batches_s": steady_s,
            "pairs_per_s": steady_pairs / steady_s, "tokens_per_s": steady_tokens / steady_s,
            "padded_share": 1 - real / total}


def torch_pass(folder: str, pairs, *, batch: int, threads: int) -> float:
    """Seconds of a PyTorch BertModel pass (mean pooling + linear head) over equal-shape pairs,
    after one warm-up batch."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.BertModel.from_pretrained(folder, dtype=torch.float32).eval()
    head = torch.nn.Linear(model.config.hidden_size, 1)
    rows = [np.concatenate([p.prompt, r]) for p in pairs for r in (p.chosen, p.rejected)]
    batches = [torch.tensor(np.stack(rows[i:i + 2 * batch]), dtype=torch.long)
               for i in range(0, len(rows), 2 * batch)]

    def run(ids):
        mask = torch.ones_like(ids)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return head(pooled)[:, 0]

    with torch.no_grad():
        run(batches[0])
        start = time.perf_counter()
        for ids in batches:
            run(ids)
        return time.perf_counter() - start


def torch_available() -> str | None:
    """None when the PyTorch column can run, else why not."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"PyTorch column skipped: {e} (pip install -r requirements-trl.txt)"
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny")
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args(argv)
    pin_threads(args.threads)
    from cwpo_jax.stages.defaults import defaults

    cfg = defaults()
    cfg.mesh.data = 1  # one device, as the pipeline on a CPU box (tests fake 8 host devices)
    skipped = "PyTorch column skipped: --no-torch" if args.no_torch else torch_available()
    if skipped:
        print(skipped, file=sys.stderr)
    rows, ratios = [], {}
    for spec in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rm, bert_folder = load_reward_model(spec, tmp)
            for workload in ("equal", "variable"):
                pairs = make_pairs(workload, args.pairs, args.length, rm.config.vocab_size)
                rows.append({"model": spec, "backend": "jax", "workload": workload,
                             "pairs": len(pairs), **jax_pass(rm, pairs, batch=args.batch,
                                                             length=args.length, cfg=cfg)})
                if workload == "equal" and bert_folder and not skipped:
                    seconds = torch_pass(bert_folder, pairs, batch=args.batch,
                                         threads=args.threads)
                    rows.append({"model": spec, "backend": "torch", "workload": workload,
                                 "pairs": len(pairs), "pass_s": seconds,
                                 "pairs_per_s": len(pairs) / seconds,
                                 "tokens_per_s": len(pairs) * 2 * args.length / seconds,
                                 "padded_share": 0.0})
                    ratios[spec] = rows[-2]["pairs_per_s"] / rows[-1]["pairs_per_s"]
    print(f"{'model':>10} {'backend':>7} {'workload':>8} {'pairs/s':>9} {'tokens/s':>10} "
          f"{'padded':>7} {'pass (s)':>9}")
    for r in rows:
        print(f"{r['model']:>10} {r['backend']:>7} {r['workload']:>8} {r['pairs_per_s']:>9.1f} "
              f"{r['tokens_per_s']:>10.0f} {r['padded_share']:>7.1%} {r['pass_s']:>9.2f}")
    for spec, ratio in ratios.items():
        print(f"{spec}: JAX / PyTorch pairs/s at equal shapes = {ratio:.2f}")
    result = {"batch": args.batch, "length": args.length, "pairs": args.pairs,
              "threads": args.threads, "rows": rows, "jax_over_torch": ratios,
              "torch_skipped": skipped}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
