"""PNG plots of a finished run: GRA per method with intervals, the annotator's confidence split
by correct / incorrect weak labels, its reliability diagram, and training curves; of a sweep:
GRA per method and labelled fraction with the intervals over seeds and every seed's value."""
from __future__ import annotations

import contextlib
import json
import os

import numpy as np


@contextlib.contextmanager
def _figure(path: str, figsize, ncols: int = 1):
    """Axes of a new figure, saved to `path` and closed when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _plots_dir(output_dir: str) -> str:
    plots = os.path.join(output_dir, "plots")
    os.makedirs(plots, exist_ok=True)
    return plots


def plot_gra(results: dict, path: str) -> None:
    names = list(results["methods"])
    gra = np.array([results["methods"][n]["gra"] for n in names]) * 100
    low = np.array([results["methods"][n]["ci_low"] for n in names]) * 100
    high = np.array([results["methods"][n]["ci_high"] for n in names]) * 100
    with _figure(path, (1.6 * len(names) + 2, 3.6)) as ax:
        ax.bar(names, gra, color="#4c72b0", yerr=[gra - low, high - gra], capsize=6)
        ax.axhline(50, color="grey", lw=1, ls="--", label="no change vs reference")
        ax.set_ylabel("GRA vs reference (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"Gold-reward win rate, 95% bootstrap CI ({results['reference']['prompts']} "
                     f"prompts)")
        ax.legend(loc="lower right")


def plot_gra_sweep(summary: dict, path: str) -> None:
    """Grouped bars: one group per method, one bar per labelled fraction (mean over seeds) with
    its 95% interval, and a dot per seed."""
    fractions = summary["sweep"]["fractions"]
    names = list(summary["methods"])
    width = 0.8 / len(fractions)
    with _figure(path, (1.8 * len(names) + 2, 3.8)) as ax:
        for j, f in enumerate(fractions):
            x = np.arange(len(names)) + (j - (len(fractions) - 1) / 2) * width
            ms = [f["methods"][n] for n in names]
            gra = np.array([m["gra"] for m in ms]) * 100
            low = np.array([m["ci_low"] for m in ms]) * 100
            high = np.array([m["ci_high"] for m in ms]) * 100
            seeds = max(m["seeds"] for m in ms)
            ax.bar(x, gra, width * 0.9, yerr=[gra - low, high - gra], capsize=4,
                   label=f"{100 * f['labelled_fraction']:g}% labels ({seeds} seed"
                         f"{'s' if seeds > 1 else ''})")
            for xi, m in zip(x, ms):
                runs = [r["gra"] * 100 for r in m["runs"]]
                ax.plot([xi] * len(runs), runs, "o", color="black", mfc="white", ms=4, zorder=3)
        ax.axhline(50, color="grey", lw=1, ls="--")
        ax.set_xticks(np.arange(len(names)), names)
        ax.set_ylabel("GRA vs reference (%)")
        ax.set_ylim(0, 100)
        ax.set_title("GRA, mean over seeds with 95% t-interval over seeds\n(one seed: bootstrap "
                     "interval over prompts); circles: single seeds", fontsize=9)
        ax.legend(loc="lower right", fontsize=8)


def write_sweep_plot(output_dir: str, summary: dict) -> str:
    out = os.path.join(_plots_dir(output_dir), "gra.png")
    plot_gra_sweep(summary, out)
    return out


def plot_confidence(conf, correct, path: str, *, against: str) -> None:
    """Histograms of C1 (conf) of the weak labels that agree with `against` and of the others."""
    conf, correct = np.asarray(conf), np.asarray(correct, bool)
    with _figure(path, (5.5, 3.6)) as ax:
        bins = np.linspace(0, 1, 21)
        ax.hist(conf[correct], bins=bins, alpha=0.7,
                label=f"weak label = {against} ({correct.sum()})")
        ax.hist(conf[~correct], bins=bins, alpha=0.7,
                label=f"weak label != {against} ({(~correct).sum()})")
        ax.set_xlabel("annotator confidence C1")
        ax.set_ylabel("pairs")
        ax.set_title(f"Confidence of correct and wrong weak labels (vs {against})")
        ax.legend()


def plot_reliability(rows: list[dict], ece: float, path: str, *, against: str) -> None:
    used = [r for r in rows if r["count"]]
    with _figure(path, (4.5, 4.2)) as ax:
        ax.plot([0.5, 1], [0.5, 1], color="grey", ls="--", lw=1, label="calibrated")
        ax.plot([r["mean_p"] for r in used], [r["accuracy"] for r in used], "o-",
                label=f"annotator (ECE {ece:.3f})")
        for r in used:
            ax.annotate(str(r["count"]), (r["mean_p"], r["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("stated P(weak label right) = sigmoid(|delta|)")
        ax.set_ylabel(f"observed agreement with {against}")
        ax.set_xlim(0.5, 1)
        ax.set_ylim(0, 1)
        ax.set_title("Reliability diagram")
        ax.legend(loc="lower right")


def plot_gold_deciles(rows: list[dict], path: str) -> None:
    """Gold accuracy of the weak labels per C1 decile: a confidence that carries information
    rises from about 50% (least confident) to well above it (most confident)."""
    used = [r for r in rows if r["count"]]
    with _figure(path, (5.5, 3.6)) as ax:
        x = np.arange(len(used))
        ax.bar(x, [100 * r["accuracy"] for r in used], color="#55a868")
        ax.axhline(50, color="grey", lw=1, ls="--", label="chance")
        ax.set_xticks(x, [f"{r['mean_confidence']:.2f}\n({r['count']})" for r in used], fontsize=7)
        ax.set_xlabel("C1 decile: mean C1 (pairs)")
        ax.set_ylabel("weak labels in the gold order (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Annotator reliability against gold, by confidence decile")
        ax.legend(loc="lower right")


def read_metrics(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training(curves: dict[str, list[dict]], path: str) -> None:
    with _figure(path, (10, 3.6), ncols=2) as axes:
        for name, records in curves.items():
            steps = [r["step"] for r in records]
            axes[0].plot(steps, [r["loss"] for r in records], label=name)
            key = "rewards/margins" if "rewards/margins" in records[0] else None
            if key:
                axes[1].plot(steps, [r[key] for r in records], label=name)
        axes[0].set_title("training loss")
        axes[1].set_title("implicit reward margin (beta * log-ratio)")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend(fontsize=7)


def write_plots(output_dir: str, results: dict, scores: dict, gold_a_wins=None) -> list[str]:
    """All plots of a run into output_dir/plots; returns the file paths."""
    plots = _plots_dir(output_dir)
    out = [os.path.join(plots, "gra.png")]
    plot_gra(results, out[-1])
    weak_a = scores["score_a"] >= scores["score_b"]
    keep = np.ones_like(weak_a)
    if gold_a_wins is not None:  # (gold_a_wins, gold_decided): ties have no right label
        (truth, keep), against = gold_a_wins, "gold"
    else:
        truth, against = np.ones_like(weak_a), "human"
    out.append(os.path.join(plots, "confidence_hist.png"))
    plot_confidence(scores["c1"][keep], (weak_a == truth)[keep], out[-1], against=against)
    a = results["annotator"]
    key = f"calibration_vs_{against}"
    out.append(os.path.join(plots, "reliability.png"))
    plot_reliability(a[key], a[f"ece_vs_{against}"], out[-1], against=against)
    if "accuracy_by_decile_vs_gold" in a:
        out.append(os.path.join(plots, "gold_deciles.png"))
        plot_gold_deciles(a["accuracy_by_decile_vs_gold"], out[-1])
    curves = {}
    for stage in ["annotator"] + [f"align/{m}" for m in results["methods"]]:
        metrics = os.path.join(output_dir, stage, "metrics.jsonl")
        if os.path.exists(metrics):
            curves[stage] = read_metrics(metrics)
    if curves:
        out.append(os.path.join(plots, "training.png"))
        plot_training(curves, out[-1])
    return out


def plot_frontier(curves: dict, path: str) -> None:
    """GRA (left) and gated GRA (right) against the KL estimate: per method, one thin line per
    seed through its points (in KL order) and a thick line through the means over seeds of
    each learning rate's KL and GRA. curves: {method: {seed: [{"lr", "kl", "gra",
    "gated_gra"}, ...]}}."""
    with _figure(path, (11, 4.2), ncols=2) as axes:
        for color, (method, seeds) in zip(
                ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"] * 3,
                curves.items()):
            for ax, key in zip(axes, ("gra", "gated_gra")):
                for points in seeds.values():
                    pts = sorted(points, key=lambda p: p["kl"])
                    ax.plot([p["kl"] for p in pts], [100 * p[key] for p in pts], "o-",
                            color=color, lw=0.8, ms=3, alpha=0.45)
                lrs = sorted({p["lr"] for points in seeds.values() for p in points})
                mean = [(np.mean([p["kl"] for ps in seeds.values() for p in ps if p["lr"] == lr]),
                         np.mean([p[key] for ps in seeds.values() for p in ps if p["lr"] == lr]))
                        for lr in lrs]
                mean.sort()
                ax.plot([m[0] for m in mean], [100 * m[1] for m in mean], "s-", color=color,
                        lw=2.2, ms=6, label=method)
        for ax, title in zip(axes, ("GRA", "gated GRA (degenerate samples count as worst)")):
            ax.axhline(50, color="grey", lw=1, ls="--")
            ax.set_xscale("log")
            ax.set_xlabel("KL estimate (nats, log scale)")
            ax.set_ylabel(f"{title.split(' (')[0]} vs reference (%)")
            ax.set_ylim(0, 100)
            ax.set_title(title, fontsize=9)
        axes[0].legend(fontsize=8, loc="lower right")
