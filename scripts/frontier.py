"""The reward-KL frontier of configs/frontier.py: run every point (resumable), then compare the
methods at matched KL.

python scripts/frontier.py --out=runs/frontier            # run or resume, then summarise
python scripts/frontier.py --out=runs/frontier --plan     # the points and the cost, no run
python scripts/frontier.py --out=runs/frontier --summary  # summarise the finished points

Layout: OUT/seed<s>/lr<lr>/ is a normal run folder holding the methods whose grid
(LEARNING_RATES in the preset) has that learning rate. The seed's first folder runs the whole
pipeline; every other folder of the seed links its data, tokens, annotator, sft and refcache
folders to the first's (the same pool, splits, annotator, reference and reference log-probs;
the score stage reruns in seconds, since the scores file names its annotator's folder). Every
folder of a seed samples the reference with the same keys, so the reference samples are the
same in each (checked here) and every comparison within a seed is paired by prompt.

Summary (OUT/frontier.json, OUT/frontier.md, OUT/frontier.png): per method, seed and learning
rate the KL estimate, GRA and gated GRA; per pair in COMPARISONS and per seed, the mean
difference A - B over the KL range both curves cover (each GRA linear in KL between its
points; a one-point oracle is compared at its own KL), computed per prompt from the win rates,
with a bootstrap interval over prompts; over seeds, the mean of the per-seed differences with a
hierarchical bootstrap interval (seeds, then prompts within seed). The KL positions are held at
their estimates: the intervals cover the noise of GRA, not of KL.
"""
import argparse
import importlib.util
import json
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from cwpo_jax.evaluation import (  # noqa: E402
    bootstrap_interval,
    hierarchical_bootstrap,
    matched_contrast,
    prompt_win_rates,
    shared_range,
)
from paired_runs import read_samples  # noqa: E402

PRESET = os.path.join(ROOT, "configs", "frontier.py")
PER_PROMPT = ("wins", "gated_wins", "degenerate")  # [P] per point: matched() reads these
LINKED = ("data", "tokens", "annotator", "sft", "refcache")
COMPARISONS = (("weak_confidence", "human"), ("gold", "human"), ("weak_confidence", "gold"),
               ("weak_confidence", "gold_weighted"), ("weak_confidence", "gold_top_fraction"))

# Cost per unit on the 2-core machine, from docs/experiments.md (quiet demo_quick runs and
# demo_full's seed): seconds.
COST = {"annotator": 110, "score": 6, "reference_pass": 80, "compile": 15, "step": 5.3,
        "sample_batch": 17, "movement_row": 0.23}
# Pairs each method trains on in demo_quick's pool (258 unlabelled pairs, about 240 of them
# gold-decided; gold_top_fraction keeps ceil(0.3 * 258)).
PAIRS = {"gold": 240, "gold_weighted": 240, "human": 258, "weak_confidence": 258,
         "gold_top_fraction": 78, "weak": 258}


def load_preset():
    spec = importlib.util.spec_from_file_location("frontier_preset", PRESET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def folders(preset, out: str) -> list[dict]:
    """Every run folder of the frontier in run order (seeds outer, learning rates ascending):
    {seed, lr, methods, dir, home (the seed's first folder)}."""
    rates = sorted({lr for grid in preset.LEARNING_RATES.values() for lr in grid})
    plan = []
    for seed in preset.SEEDS:
        home = os.path.join(out, f"seed{seed}", f"lr{rates[0]:g}")
        for lr in rates:
            methods = tuple(m for m, grid in preset.LEARNING_RATES.items() if lr in grid)
            plan.append({"seed": seed, "lr": lr, "methods": methods, "home": home,
                         "dir": os.path.join(out, f"seed{seed}", f"lr{lr:g}")})
    return plan


def point_config(preset, folder: dict):
    cfg = preset.get_config()
    cfg.seed = folder["seed"]
    cfg.output_dir = folder["dir"]
    cfg.align.train.learning_rate = folder["lr"]
    cfg.align.methods = folder["methods"]
    return cfg


def cost(preset, plan) -> dict:
    """Expected seconds on the 2-core machine (COST, PAIRS), per part and in all."""
    cfg = preset.get_config()
    batch = cfg.align.train.batch_size
    samples = cfg.data.max_eval_prompts * cfg.evaluate.samples_per_prompt
    sample_s = math.ceil(samples / cfg.evaluate.batch_size) * COST["sample_batch"]
    heldout = cfg.evaluate.heldout_pairs
    parts = {"training": 0.0, "sampling": 0.0, "movement": 0.0, "per seed": 0.0,
             "per folder": 0.0}
    steps = 0
    for folder in plan:
        if folder["dir"] == folder["home"]:
            parts["per seed"] += COST["annotator"] + COST["reference_pass"]
        # the score stage, the reference's samples and their (and the held-out pairs') rows
        parts["per folder"] += (COST["score"] + sample_s
                                + (heldout + samples) * COST["movement_row"])
        for m in folder["methods"]:
            n = math.ceil(PAIRS[m] / batch)
            steps += n
            parts["training"] += COST["compile"] + n * COST["step"]
            parts["sampling"] += sample_s
            # the policy's pass (held-out pairs and its samples), the reference's over them
            parts["movement"] += (heldout + 2 * samples) * COST["movement_row"]
    points = sum(len(f["methods"]) for f in plan)
    return {"points": points, "steps": steps, "samples": points * samples,
            "seconds": {k: round(v) for k, v in parts.items()},
            "hours": round(sum(parts.values()) / 3600, 2)}


def link_shared(folder: dict) -> None:
    """Link the seed's first folder's shared stages into `folder` (kept where present)."""
    os.makedirs(folder["dir"], exist_ok=True)
    for name in LINKED:
        target, link = os.path.join(folder["home"], name), os.path.join(folder["dir"], name)
        if not os.path.lexists(link):
            if not os.path.exists(target):
                raise SystemExit(f"{target}: missing; the seed's first folder has not run")
            os.symlink(os.path.abspath(target), link)


def run(preset, plan) -> None:
    import jax

    from cwpo_jax.stages import pipeline, preflight
    from cwpo_jax.stages.config import ConfigError, validate
    from cwpo_jax.train.loop import NonFiniteError

    cache = os.path.join(os.path.expanduser("~"), ".cache", "cwpo_jax", "xla")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    configs = [point_config(preset, f) for f in plan]
    for cfg in configs:  # every point's config is checked before any compute
        try:
            validate(cfg, num_devices=jax.device_count())
        except ConfigError as e:
            raise SystemExit(f"invalid config of {cfg.output_dir}:\n{e}")
    for folder, cfg in zip(plan, configs):
        if folder["dir"] != folder["home"]:
            link_shared(folder)
        preflight.check_inputs(cfg)
        print(f"frontier: seed {folder['seed']}, lr {folder['lr']:g}: "
              f"{', '.join(folder['methods'])}", flush=True)
        try:
            pipeline.run(cfg)
        except NonFiniteError as e:
            # A learning rate too large for a method ends that folder, not the frontier: the
            # folder has no results and the summary leaves its points out (a rerun tries again).
            print(f"frontier: {folder['dir']} stopped, left out of the summary: {e}", flush=True)


def finished_points(plan) -> dict:
    """{seed: {method: [{lr, kl, gra, gated_gra, wins [P], gated_wins [P]}]}} of every
    evaluated folder; refuses folders of a seed whose reference samples differ."""
    out, reference = {}, {}
    for folder in plan:
        results = os.path.join(folder["dir"], "results.json")
        if not os.path.exists(results):
            continue
        with open(results) as f:
            methods = json.load(f)["methods"]
        ref = {g: read_samples(folder["dir"], "reference", gated=g) for g in (False, True)}
        keys, texts, gold = ref[False]
        first = reference.setdefault(folder["seed"], (keys, texts, gold.tolist()))
        if (keys, texts, gold.tolist()) != first:
            raise SystemExit(f"{folder['dir']}: its reference samples differ from the first "
                             "folder's of the seed; the points are not paired")
        for m in folder["methods"]:
            if methods.get(m, {}).get("kl_estimate") is None:
                continue
            wins = {g: prompt_win_rates(read_samples(folder["dir"], m, gated=g)[2], ref[g][2])
                    for g in (False, True)}
            # a sample is degenerate where gating put its gold at -inf
            flagged = np.isneginf(read_samples(folder["dir"], m, gated=True)[2]).mean(axis=1)
            out.setdefault(folder["seed"], {}).setdefault(m, []).append(
                {"lr": folder["lr"], "kl": methods[m]["kl_estimate"],
                 "gra": float(wins[False].mean()), "gated_gra": float(wins[True].mean()),
                 "degenerate_share": methods[m]["degeneration"]["degenerate_share"],
                 "wins": wins[False], "gated_wins": wins[True], "degenerate": flagged})
    return out


def matched(points: dict, a: str, b: str, key: str) -> dict:
    """The matched-KL difference A - B per seed and over seeds, on win rates `key`."""
    per_seed, groups = [], []
    for seed, methods in sorted(points.items()):
        if a not in methods or b not in methods:
            continue
        pa, pb = methods[a], methods[b]
        contrast = matched_contrast([p["kl"] for p in pa], [p["kl"] for p in pb])
        if contrast is None:
            per_seed.append({"seed": seed, "diff": None, "kl_range": None})
            continue
        c_a, c_b = contrast
        per_prompt = (np.stack([p[key] for p in pa], axis=1) @ c_a
                      - np.stack([p[key] for p in pb], axis=1) @ c_b)
        diff, low, high = bootstrap_interval(per_prompt, seed=seed)
        span = (shared_range([p["kl"] for p in pa], [p["kl"] for p in pb])
                if len(pa) > 1 and len(pb) > 1 else
                ([p["kl"] for p in (pa if len(pa) == 1 else pb)][0],) * 2)
        per_seed.append({"seed": seed, "diff": diff, "ci_low": low, "ci_high": high,
                         "kl_range": list(span)})
        groups.append(per_prompt)
    return {"per_seed": per_seed,
            "over_seeds": hierarchical_bootstrap(groups) if groups else None}


def summarise(preset, plan, out: str) -> dict:
    from cwpo_jax import report

    points = finished_points(plan)
    summary = {"comparisons": {}, "points": {
        str(seed): {m: [{k: v for k, v in p.items() if k not in PER_PROMPT}
                        for p in ps] for m, ps in methods.items()}
        for seed, methods in points.items()}}
    for a, b in COMPARISONS:
        summary["comparisons"][f"{a}-{b}"] = {
            "raw": matched(points, a, b, "wins"), "gated": matched(points, a, b, "gated_wins"),
            "degenerate_share": matched(points, a, b, "degenerate")}
    with open(os.path.join(out, "frontier.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "frontier.md"), "w") as f:
        f.write(markdown(summary))
    curves = {}
    for seed, methods in points.items():
        for m, ps in methods.items():
            curves.setdefault(m, {})[seed] = ps
    if curves:
        report.plot_frontier(curves, os.path.join(out, "frontier.png"))
    return summary


def _interval(d) -> str:
    if d is None or d.get("diff", d.get("mean")) is None:
        return "-"
    value = d.get("diff", d.get("mean"))
    return f"{100 * value:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def markdown(summary: dict) -> str:
    lines = ["Points at matched KL (A - B: mean over the KL range both cover; a one-point "
             "oracle at its own KL) of GRA (raw), gated GRA and the share of degenerate samples. "
             "Per seed: bootstrap over prompts; over seeds: hierarchical bootstrap (seeds, then "
             "prompts within seed).", "",
             "| A - B | of | over seeds | per seed (KL range) |", "|---|---|---|---|"]
    for name, both in summary["comparisons"].items():
        for kind in ("raw", "gated", "degenerate_share"):
            c = both[kind]
            seeds = "; ".join(
                f"{s['seed']}: {_interval(s)}"
                + (f" ({s['kl_range'][0]:.1f}-{s['kl_range'][1]:.1f})" if s["kl_range"] else "")
                for s in c["per_seed"])
            lines.append(f"| {name} | {kind} | {_interval(c['over_seeds'])} | {seeds or '-'} |")
    lines += ["", "| seed | method | lr | KL | GRA (%) | gated GRA (%) | degenerate (%) |",
              "|---|---|---|---|---|---|---|"]
    for seed, methods in summary["points"].items():
        for m, ps in methods.items():
            for p in sorted(ps, key=lambda p: p["lr"]):
                lines.append(f"| {seed} | {m} | {p['lr']:g} | {p['kl']:.2f} | "
                             f"{100 * p['gra']:.1f} | {100 * p['gated_gra']:.1f} | "
                             f"{100 * p['degenerate_share']:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the frontier's folder")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--plan", action="store_true", help="print the points and the cost")
    group.add_argument("--summary", action="store_true", help="summarise finished points only")
    args = parser.parse_args()
    preset = load_preset()
    out = os.path.abspath(args.out)
    plan = folders(preset, out)
    if args.plan:
        for f in plan:
            print(f"seed {f['seed']} lr {f['lr']:g}: {', '.join(f['methods'])}")
        print(json.dumps(cost(preset, plan)))
        return
    if not args.summary:
        run(preset, plan)
    elif not os.path.isdir(out):
        raise SystemExit(f"{out}: no such folder")
    print(markdown(summarise(preset, plan, out)))


if __name__ == "__main__":
    main()
