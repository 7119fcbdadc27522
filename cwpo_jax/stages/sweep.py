"""Aggregate a sweep (config sweep.runs: one full pipeline run per (labelled_fraction, seed)).

Per labelled fraction and method: GRA (and gated GRA, and the paired differences of both) mean
over seeds, sample sd and a Student-t 95% interval of the mean over seeds (runs are the
independent units: each seed draws its own splits, simulated rater labels, annotator head and
batch order, LoRA init and dropout, and evaluation samples); a fraction run with one seed keeps
that run's bootstrap interval over prompts instead. The degeneration metrics of every model's
samples: each metric's mean over seeds. The first fraction of the sweep is the main one: its
numbers fill the top-level "methods", "annotator" and "reference" keys of results.json, as in a
single run; "sweep" holds every fraction and run.
"""
from __future__ import annotations

import jax
import numpy as np

from cwpo_jax import report
from cwpo_jax.evaluation import seed_interval
from cwpo_jax.io_utils import atomic_open, write_json
from cwpo_jax.stages import run_folder
from cwpo_jax.stages.config import run_name
from cwpo_jax.stages.methods import DIFFERENCES
from cwpo_jax.stages.tables import (
    degeneration_table,
    differences_markdown,
    label_quality_markdown,
    pct,
)
from cwpo_jax.train.hosts import log

T_INTERVAL = "95% Student-t interval of the mean over seeds"
BOOTSTRAP = "95% bootstrap interval over prompts of the single seed"
ANNOTATOR_KEYS = ("accuracy_vs_human", "accuracy_vs_gold", "human_vs_gold",
                  "heldout_accuracy_vs_human", "mean_confidence", "ece_vs_human", "ece_vs_gold",
                  "gold_gap_correlation", "top_fraction_gold_accuracy")
MOVEMENT_KEYS = ("final_loss", "heldout_gold_accuracy", "kl_estimate")
QUALITY_KEYS = ("pairs", "gold_accuracy", "weighted_gold_accuracy", "tie_weight_share")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _gated_summary(per_run: list[dict]) -> dict:
    """Gated GRA (a degenerate sample counts as the worst) over seeds, as GRA is; {} when a run
    has none."""
    if not all("gated_gra" in m for m in per_run):
        return {}
    stats = seed_interval([m["gated_gra"] for m in per_run])
    if stats["n"] == 1:
        return {k: per_run[0][k] for k in ("gated_gra", "gated_ci_low", "gated_ci_high")}
    return {"gated_gra": stats["mean"], "gated_sd": stats["sd"], "gated_ci_low": stats["ci_low"],
            "gated_ci_high": stats["ci_high"]}


def _degeneration(per_run: list[dict]) -> dict:
    """{"degeneration": each metric's mean over seeds} (a metric a run lacks is left out of its
    mean); {} when a run has no degeneration metrics (results of earlier code)."""
    if not all(m.get("degeneration") for m in per_run):
        return {}
    return {"degeneration": {k: _mean([m["degeneration"].get(k) for m in per_run])
                             for k in per_run[0]["degeneration"]}}


def _method_summary(per_run: list[dict], seeds: list[int]) -> dict:
    stats = seed_interval([m["gra"] for m in per_run])
    one = stats["n"] == 1
    return {"gra": stats["mean"], "sd": stats["sd"], **_gated_summary(per_run),
            **_degeneration(per_run),
            "ci_low": per_run[0]["ci_low"] if one else stats["ci_low"],
            "ci_high": per_run[0]["ci_high"] if one else stats["ci_high"],
            "interval": BOOTSTRAP if one else T_INTERVAL, "seeds": stats["n"],
            "mean_gold": float(np.mean([m["mean_gold"] for m in per_run])),
            "pairs": float(np.mean([m["pairs"] for m in per_run])),
            **{k: _mean([m.get(k) for m in per_run]) for k in MOVEMENT_KEYS},
            "runs": [{"seed": s, **{k: m[k] for k in ("gra", "ci_low", "ci_high", "mean_gold",
                                                      "pairs")}}
                     for s, m in zip(seeds, per_run)]}


def _annotator_summary(per_run: list[dict], seeds: list[int]) -> dict:
    keys = [k for k in ANNOTATOR_KEYS if all(k in a for a in per_run)]
    out = {k: float(np.mean([a[k] for a in per_run])) for k in keys}
    out["seeds"] = len(per_run)
    out["runs"] = [{"seed": s, **{k: a[k] for k in keys}} for s, a in zip(seeds, per_run)]
    return out


def _differences(group: list[dict], key: str = "gra", source: str = "differences") -> dict:
    """Per difference "A-B" of methods.DIFFERENCES: the mean over seeds of the per-seed
    differences of `key` (GRA, or gated GRA with source "differences_gated") with a Student-t
    interval (a single seed keeps its paired bootstrap)."""
    out = {}
    for a, b in DIFFERENCES:
        if not all(a in r["methods"] and b in r["methods"] for r in group):
            continue
        if not all(key in r["methods"][m] for r in group for m in (a, b)):
            continue
        per_seed = [r["methods"][a][key] - r["methods"][b][key] for r in group]
        stats = seed_interval(per_seed)
        if stats["n"] == 1:
            out[f"{a}-{b}"] = {**group[0][source][f"{a}-{b}"], "per_seed": per_seed}
        else:
            out[f"{a}-{b}"] = {"diff": stats["mean"], "sd": stats["sd"], "ci_low": stats["ci_low"],
                               "ci_high": stats["ci_high"], "n": stats["n"],
                               "interval": T_INTERVAL, "per_seed": per_seed}
    return out


def _label_quality(group: list[dict]) -> dict | None:
    if not all(r.get("label_quality") for r in group):
        return None
    return {m: {k: _mean([r["label_quality"][m][k] for r in group]) for k in QUALITY_KEYS}
            for m in group[0]["label_quality"]}


def aggregate(runs: list[tuple[float, int, dict]], config: dict) -> dict:
    """runs: (labelled_fraction, seed, that run's results.json) in sweep order -> the sweep's
    results.json (pure)."""
    fractions = list(dict.fromkeys(f for f, _, _ in runs))  # sweep order, each once
    by_fraction = []
    for fraction in fractions:
        group = [(s, r) for f, s, r in runs if f == fraction]
        seeds = [s for s, _ in group]
        by_fraction.append({
            "labelled_fraction": fraction, "seeds": seeds,
            "methods": {name: _method_summary([r["methods"][name] for _, r in group], seeds)
                        for name in group[0][1]["methods"]},
            "annotator": _annotator_summary([r["annotator"] for _, r in group], seeds),
            "differences": _differences([r for _, r in group]),
            "differences_gated": _differences([r for _, r in group], "gated_gra",
                                              "differences_gated")
            if all("differences_gated" in r for _, r in group) else {},
            "label_quality": _label_quality([r for _, r in group]),
            "reference": {"mean_gold": float(np.mean([r["reference"]["mean_gold"]
                                                      for _, r in group])),
                          "prompts": group[0][1]["reference"]["prompts"],
                          "samples_per_prompt": group[0][1]["reference"]["samples_per_prompt"],
                          **_degeneration([r["reference"] for _, r in group])}})
    main = by_fraction[0]
    return {"methods": main["methods"], "annotator": main["annotator"],
            "differences": main["differences"], "differences_gated": main["differences_gated"],
            "label_quality": main["label_quality"],
            "reference": main["reference"], "labelled_fraction": main["labelled_fraction"],
            "gold_judge": runs[0][2]["gold_judge"], "config": config,
            "sweep": {"fractions": by_fraction,
                      "runs": [{"labelled_fraction": f, "seed": s, "dir": run_name(f, s),
                                "methods": r["methods"], "annotator": r["annotator"],
                                "differences": r.get("differences"),
                                "label_quality": r.get("label_quality"),
                                "reference": r["reference"]} for f, s, r in runs]}}


def markdown(summary: dict) -> str:
    """Paper Table 3 layout: methods as rows, labelled fractions as columns; then intervals,
    the annotator and every run."""
    cfg, fractions = summary["config"], summary["sweep"]["fractions"]
    ref = summary["reference"]
    k = ref["samples_per_prompt"]
    head = "| method | " + " | ".join(f"{100 * f['labelled_fraction']:g}% labels"
                                      for f in fractions) + " |"
    rule = "|---" * (len(fractions) + 1) + "|"
    lines = [(f"Student {cfg['sft']['model']}, weak annotator {cfg['annotator']['model']}, loss "
              f"{cfg['align']['loss']} (beta {cfg['align']['beta']}); gold judge "
              f"{summary['gold_judge']}; {ref['prompts']} held-out prompts per run, {k} "
              f"sample{'s' if k > 1 else ''} per prompt from each model."), "",
             "GRA vs reference (%): mean ± sd over seeds (number of seeds).", "", head, rule]

    def cell(m):
        sd = f" ± {pct(m['sd'])}" if m["sd"] is not None else ""
        return f"{pct(m['gra'])}{sd} ({m['seeds']} seed{'s' if m['seeds'] > 1 else ''})"

    names = list(summary["methods"])
    for name in names:
        lines.append(f"| {name} | " + " | ".join(cell(f["methods"][name]) for f in fractions)
                     + " |")
    if all("gated_gra" in f["methods"][n] for f in fractions for n in names):
        for name in names:
            lines.append(f"| {name}, gated (mean) | " + " | ".join(
                pct(f["methods"][name]["gated_gra"]) for f in fractions) + " |")
    for key, label in (("accuracy_vs_human", "annotator accuracy vs human labels"),
                       ("accuracy_vs_gold", "annotator accuracy vs gold"),
                       ("top_fraction_gold_accuracy", "annotator's most confident labels vs gold"),
                       ("human_vs_gold", "simulated raters vs gold")):
        if all(key in f["annotator"] for f in fractions):
            lines.append(f"| {label} (mean) | " + " | ".join(
                pct(f["annotator"][key]) for f in fractions) + " |")
    if all("gold_gap_correlation" in f["annotator"] for f in fractions):
        lines.append("| correlation of C1 with the gold gap (mean) | " + " | ".join(
            f"{f['annotator']['gold_gap_correlation']:.2f}" for f in fractions) + " |")
    lines += ["", (f"95% intervals of the mean GRA (%): {T_INTERVAL}; with one seed, that run's "
                   "bootstrap interval over prompts (marked *)."), "", head, rule]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            f"[{pct(m['ci_low'])}, {pct(m['ci_high'])}]" + ("*" if m["seeds"] == 1 else "")
            for m in (f["methods"][name] for f in fractions)) + " |")
    for f in fractions:
        label = f"{100 * f['labelled_fraction']:g}% labels, {len(f['seeds'])} seed(s)"
        interval = T_INTERVAL if len(f["seeds"]) > 1 else BOOTSTRAP
        if f["differences"]:
            lines += ["", f"Paired GRA differences, {label}:", ""]
            lines += differences_markdown(f["differences"], interval)
        if f.get("differences_gated"):
            lines += ["", f"The same, gated (a degenerate sample counts as the worst), {label}:",
                      ""]
            lines += differences_markdown(f["differences_gated"], interval)
        if all("degeneration" in m for m in (*f["methods"].values(), f["reference"])):
            lines += ["", f"Degeneration of the evaluation samples, {label} (each metric's mean "
                      "over seeds; degenerate: beyond each run's thresholds from its reference "
                      "samples):", ""]
            lines += degeneration_table([(n, m["degeneration"]) for n, m in f["methods"].items()]
                                        + [("reference (SFT)", f["reference"]["degeneration"])])
        if f["label_quality"]:
            lines += ["", f"Label quality by gold before training, {label} (mean over seeds):",
                      ""]
            lines += label_quality_markdown(f["label_quality"])
    lines += ["", ("Every run: GRA (%) [bootstrap 95% interval over prompts]; annotator accuracy "
                   "(%) vs human labels / vs gold."), "",
              "| labelled | seed | " + " | ".join(names) + " | annotator |",
              "|---" * (len(names) + 3) + "|"]
    for r in summary["sweep"]["runs"]:
        a = r["annotator"]
        lines.append(f"| {100 * r['labelled_fraction']:g}% | {r['seed']} | " + " | ".join(
            f"{pct(m['gra'])} [{pct(m['ci_low'])}, {pct(m['ci_high'])}]"
            for m in (r["methods"][n] for n in names))
            + f" | {pct(a['accuracy_vs_human'])} / {pct(a.get('accuracy_vs_gold'))} |")
    return "\n".join(lines) + "\n"


def write(cfg, runs: list[tuple[float, int, dict]]) -> dict:
    """results.json, results.md and plots/gra.png of the sweep in cfg.output_dir; prints the
    table. Returns the summary."""
    summary = aggregate(runs, cfg.to_dict())
    text = markdown(summary)
    if jax.process_index() == 0:
        write_json(run_folder.path(cfg, "results.json"), summary)
        with atomic_open(run_folder.path(cfg, "results.md")) as f:
            f.write(text)
        log("sweep", f"wrote {report.write_sweep_plot(cfg.output_dir, summary)}")
        print(text)
    return summary
