"""The weak annotator's scoring pass: pairs/s and tokens/s of a reward model scoring both
responses of preference pairs. Prints a table and one final JSON line.

python benchmarks/score.py --models=minilm,smollm2 --pairs=256 --batch=16 --length=128 \
    [--threads=N] [--no-torch]

Models: `minilm` (all-MiniLM-L6-v2, mean pooling + a scalar head, the demo's annotator),
`smollm2` (SmolLM2-135M as a reward model: last-token head), `tiny` / `tiny-llama` (random tiny
encoder / decoder, for tests), or an HF folder path. The pass is the pipeline's own,
stages/pair_passes.score_pairs, with score.batch_size = `batch` and data.max_len = `length`, in
both layouts:
  padded  chosen and rejected rows of `batch` pairs (2 x batch rows), sorted by length, padded
          to the smallest of the project's buckets (data.batching.default_buckets(length)) that
          holds the batch's longest row: one jitted program per bucket;
  packed  (the pipeline's default) both sequences of every pair packed end to end into rows as
          long as the longest sequence's bucket, 2 x batch rows per batch: one program, and the
          only padding is each row's tail and the last batch's empty rows.

Workloads, each `pairs` pairs of random ids (values do not change the cost):
  equal     every sequence exactly `length` tokens (prompt length/2 + response length/2): no
            padding in either layout, one sequence per packed row;
  variable  prompt and response lengths drawn (seeded) from log-normal distributions shaped like
            chat preference data (medians 24 and 48 tokens), clipped to `length`.
Each pass runs twice: first_pass_s includes compiling (what the pipeline's score stage pays);
the rates come from the second, timed pass, which reuses the compiled programs. tokens = real
tokens of both sequences of every pair; padded_share = positions computed that hold no token /
all positions computed (empty rows of a short last batch included).

When torch and transformers are importable, BERT-type models also run in PyTorch:
transformers' BertModel from the same weights, mean pooling + a linear head, eval mode,
torch.no_grad, torch.set_num_threads(threads), timed after one warm-up batch, over the padded
layout's batches (the same pairs per batch, length-sorted) padded to each batch's longest row
(dynamic padding, as transformers' DataCollatorWithPadding does), with the attention mask, in
a subprocess of its own (a torch thread pool in the same process slowed the JAX passes).
jax_over_torch = JAX pairs/s / PyTorch pairs/s per workload and layout. Without torch those
columns are skipped. --threads pins the process to N cores (XLA sizes its pool from the affinity
mask); the default is every core.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402  (after the sys.path entry above)
from compare_trl import pin_threads  # noqa: E402  (after the sys.path entry above)

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


def computed_positions(cfg, pairs, packed: bool) -> int:
    """Positions the pass computes (rows x length over every batch, empty rows included)."""
    from cwpo_jax.data.batching import bucket_length, plan_batches
    from cwpo_jax.stages import common, pair_passes

    if packed:
        _, rows, row_len, batch_rows = pair_passes.packed_plan(cfg, pairs)
        return -(-len(rows) // batch_rows) * batch_rows * row_len
    plan = plan_batches([p.length for p in pairs], cfg.score.batch_size, shuffle=False)
    return sum(2 * cfg.score.batch_size
               * bucket_length(max(pairs[i].length for i in index), common.buckets(cfg))
               for index in plan)


def jax_pass(rm, pairs, *, batch: int, length: int, packed: bool) -> dict:
    """The score stage's pass (pair_passes.score_pairs), once to compile, once timed."""
    from types import SimpleNamespace

    from cwpo_jax.stages.pair_passes import score_pairs
    from cwpo_jax.stages.defaults import defaults

    cfg = defaults()
    cfg.mesh.data = 1  # one device, as the pipeline on a CPU box (tests fake 8 host devices)
    cfg.data.max_len, cfg.score.batch_size, cfg.score.packed = length, batch, packed
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=None)  # pads are masked: id is moot
    times = []
    for _ in range(2):
        start = time.perf_counter()
        score_a, _ = score_pairs(cfg, rm, pairs, tok, "bench/score")
        times.append(time.perf_counter() - start)
    if not np.isfinite(score_a).all():
        raise FloatingPointError("non-finite scores")
    tokens = sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)
    return {"layout": "packed" if packed else "padded", "first_pass_s": times[0],
            "pass_s": times[1], "pairs_per_s": len(pairs) / times[1],
            "tokens_per_s": tokens / times[1],
            "padded_share": 1 - tokens / computed_positions(cfg, pairs, packed)}


def torch_pass(folder: str, pairs, *, batch: int, threads: int) -> dict:
    """A PyTorch BertModel pass (mean pooling + linear head) over the padded layout's batches,
    each padded to its longest row, timed after one warm-up batch."""
    import torch
    import transformers

    from cwpo_jax.data.batching import plan_batches

    torch.set_num_threads(threads)
    model = transformers.BertModel.from_pretrained(folder, dtype=torch.float32).eval()
    head = torch.nn.Linear(model.config.hidden_size, 1)
    batches, real, total = [], 0, 0
    for index in plan_batches([p.length for p in pairs], batch, shuffle=False):
        rows = ([np.concatenate([pairs[i].prompt, pairs[i].chosen]) for i in index]
                + [np.concatenate([pairs[i].prompt, pairs[i].rejected]) for i in index])
        t = max(len(r) for r in rows)
        ids, mask = np.zeros((len(rows), t), np.int64), np.zeros((len(rows), t), np.int64)
        for k, r in enumerate(rows):
            ids[k, :len(r)], mask[k, :len(r)] = r, 1
        batches.append((torch.from_numpy(ids), torch.from_numpy(mask)))
        real, total = real + int(mask.sum()), total + mask.size

    def run(ids, mask):
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].to(hidden.dtype)
        return head((hidden * m).sum(1) / m.sum(1))[:, 0]

    with torch.no_grad():
        run(*batches[0])
        start = time.perf_counter()
        for ids, mask in batches:
            run(ids, mask)
        seconds = time.perf_counter() - start
    return {"layout": "dynamic", "pass_s": seconds, "first_pass_s": float("nan"),
            "pairs_per_s": len(pairs) / seconds, "tokens_per_s": real / seconds,
            "padded_share": 1 - real / total}


def run_torch(args, folder: str, workload: str, vocab: int) -> dict:
    """torch_pass in a subprocess (`--torch-folder`): torch's OpenMP pool, once started,
    slowed the JAX passes that followed it in one process by up to 10%, and XLA's pool may do
    the same to torch; each side gets a process of its own, as in compare_trl."""
    command = [sys.executable, os.path.abspath(__file__), f"--torch-folder={folder}",
               f"--workload={workload}", f"--vocab={vocab}", f"--pairs={args.pairs}",
               f"--batch={args.batch}", f"--length={args.length}", f"--threads={args.threads}"]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    # The PyTorch side's subprocess (run_torch): one workload over an exported BERT folder.
    p.add_argument("--torch-folder", help=argparse.SUPPRESS)
    p.add_argument("--workload", choices=("equal", "variable"), help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    pin_threads(args.threads)
    if args.torch_folder:
        pairs = make_pairs(args.workload, args.pairs, args.length, args.vocab)
        print(json.dumps(torch_pass(args.torch_folder, pairs, batch=args.batch,
                                    threads=args.threads)))
        return None

    skipped = "PyTorch column skipped: --no-torch" if args.no_torch else torch_available()
    if skipped:
        print(skipped, file=sys.stderr)
    rows, ratios = [], {}
    for spec in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rm, bert_folder = load_reward_model(spec, tmp)
            for workload in ("equal", "variable"):
                pairs = make_pairs(workload, args.pairs, args.length, rm.config.vocab_size)
                common = {"model": spec, "workload": workload, "pairs": len(pairs)}
                jax_rows = [{**common, "backend": "jax",
                             **jax_pass(rm, pairs, batch=args.batch, length=args.length,
                                        packed=packed)} for packed in (False, True)]
                rows += jax_rows
                if bert_folder and not skipped:
                    rows.append({**common, "backend": "torch",
                                 **run_torch(args, bert_folder, workload,
                                             rm.config.vocab_size)})
                    for r in jax_rows:
                        ratios[f"{spec}/{workload}/{r['layout']}"] = (
                            r["pairs_per_s"] / rows[-1]["pairs_per_s"])
    print(f"{'model':>10} {'backend':>7} {'layout':>7} {'workload':>8} {'pairs/s':>9} "
          f"{'tokens/s':>10} {'padded':>7} {'pass (s)':>9} {'1st pass':>9}")
    for r in rows:
        print(f"{r['model']:>10} {r['backend']:>7} {r['layout']:>7} {r['workload']:>8} "
              f"{r['pairs_per_s']:>9.1f} {r['tokens_per_s']:>10.0f} {r['padded_share']:>7.1%} "
              f"{r['pass_s']:>9.2f} {r['first_pass_s']:>9.2f}")
    for key, ratio in ratios.items():
        print(f"{key}: JAX / PyTorch pairs/s = {ratio:.2f}")
    result = {"batch": args.batch, "length": args.length, "pairs": args.pairs,
              "threads": args.threads, "rows": rows, "jax_over_torch": ratios,
              "torch_skipped": skipped}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
