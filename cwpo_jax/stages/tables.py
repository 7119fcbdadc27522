"""The markdown tables of results.md (one run, evaluate) and of a sweep's (stages/sweep.py)."""
from __future__ import annotations


def pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def num(x, fmt=".3f") -> str:
    return "-" if x is None or x != x else format(x, fmt)


def label_quality_markdown(quality: dict) -> list[str]:
    lines = ["| method | pairs | gold accuracy (%) | weighted gold accuracy (%) | "
             "weight on gold ties (%) |", "|---|---|---|---|---|"]
    for name, q in quality.items():
        lines.append(f"| {name} | {q['pairs']:g} | {pct(q['gold_accuracy'])} | "
                     f"{pct(q['weighted_gold_accuracy'])} | {pct(q['tie_weight_share'])} |")
    return lines


def differences_markdown(diffs: dict, interval: str) -> list[str]:
    lines = [f"| difference | GRA points | 95% interval ({interval}) |", "|---|---|---|"]
    for name, d in diffs.items():
        lines.append(f"| {name} | {100 * d['diff']:+.1f} | [{100 * d['ci_low']:+.1f}, "
                     f"{100 * d['ci_high']:+.1f}] |")
    return lines


def annotator_markdown(a: dict) -> list[str]:
    text = (f"Annotator on the unlabelled share: accuracy vs human labels "
            f"{pct(a['accuracy_vs_human'])}%")
    if "accuracy_vs_gold" in a:
        text += (f", vs gold {pct(a['accuracy_vs_gold'])}% (simulated raters vs gold "
                 f"{pct(a['human_vs_gold'])}%; {a['gold_decided_pairs']} pairs with a gold "
                 f"preference); the {100 * a['top_fraction']:g}% most confident labels "
                 f"{pct(a['top_fraction_gold_accuracy'])}% vs gold; correlation of C1 with the "
                 f"gold gap {num(a['gold_gap_correlation'], '.2f')}")
    text += (f"; mean C1 {num(a['mean_confidence'])}; ECE vs human "
             f"{num(a['ece_vs_human'])}.")
    lines = [text]
    if "accuracy_by_decile_vs_gold" in a:
        rows = [r for r in a["accuracy_by_decile_vs_gold"] if r["count"]]
        lines += ["", "Gold accuracy of the weak labels per C1 decile (least confident first): "
                  + ", ".join(f"{pct(r['accuracy'])}% (C1 {r['c_low']:.3g}-{r['c_high']:.3g}, "
                              f"{r['count']})" for r in rows) + "."]
    return lines


def degeneration_table(rows: list[tuple[str, dict]]) -> list[str]:
    """One row per (model, its degeneration summary): the metrics of degeneration.summary."""
    lines = ["| model | NLL/token | distinct-1 | distinct-2 | repeat rate | non-word share | "
             "length (words) | positive-word density | degenerate (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, d in rows:
        lines.append(f"| {name} | {num(d['nll'], '.2f')} | {num(d['distinct_1'], '.2f')} | "
                     f"{num(d['distinct_2'], '.2f')} | {num(d['repeat_rate'], '.2f')} | "
                     f"{num(d['nonword_share'], '.2f')} | {num(d['length'], '.1f')} | "
                     f"{num(d['positive_density'], '.2f')} | {pct(d['degenerate_share'])} |")
    return lines


def degeneration_markdown(results: dict) -> list[str]:
    gate = results["degeneration_gate"]
    t = gate["thresholds"]
    rows = [(n, m["degeneration"]) for n, m in results["methods"].items()]
    rows.append(("reference (SFT)", results["reference"]["degeneration"]))
    lines = ["Degeneration of the evaluation samples (means over samples; distinct-n over all of "
             "a model's samples; NLL per token under the reference):", ""]
    lines += degeneration_table(rows)
    lines += ["", f"Degenerate: beyond the reference samples' {100 * gate['quantile']:g}% "
                  f"quantile (the {100 * (1 - gate['quantile']):g}% one for length) of NLL/token "
                  f"({num(t['nll'], '.2f')}), repeat rate ({num(t['repeat_rate'], '.2f')}), "
                  f"non-word share ({num(t['nonword_share'], '.2f')}; vocabulary of "
                  f"{gate['vocabulary_words']} words from the pool and prompt corpus) or length "
                  f"({num(t['length'], '.1f')} words); such a sample counts as the worst in "
                  "gated GRA."]
    return lines


def results_markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [f"Student {cfg['sft']['model']} (reference = "
             f"{'its SFT' if cfg['sft']['enabled'] else 'the model as given'}), weak annotator "
             f"{cfg['annotator']['model']} trained on {100 * cfg['data']['labelled_fraction']:.0f}%"
             f" human labels, loss {cfg['align']['loss']} (beta {cfg['align']['beta']}).", "",
             "| method | GRA vs reference (%) | 95% CI | gated GRA (%) | mean gold reward | "
             "pairs trained | final train loss (per unit weight) | held-out implicit-reward "
             "accuracy vs gold (%) | KL estimate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        gated = (f"{pct(m['gated_gra'])} [{pct(m['gated_ci_low'])}, {pct(m['gated_ci_high'])}]"
                 if "gated_gra" in m else "-")
        lines.append(f"| {name} | {100 * m['gra']:.1f} | [{100 * m['ci_low']:.1f}, "
                     f"{100 * m['ci_high']:.1f}] | {gated} | {m['mean_gold']:.3f} | "
                     f"{m['pairs']} | {num(m.get('final_loss'))} | "
                     f"{pct(m.get('heldout_gold_accuracy'))} | "
                     f"{num(m.get('kl_estimate'), '.2f')} |")
    ref = results["reference"]
    lines.append(f"| reference (SFT) | - | - | - | {ref['mean_gold']:.3f} | - | - | - | - |")
    k = ref["samples_per_prompt"]
    samples = (f", {k} samples per prompt from each model (GRA per prompt over the {k} x {k} "
               f"comparisons; the interval resamples prompts)" if k > 1 else "")
    lines += ["", f"Prompts: {ref['prompts']}{samples}. Gold judge: {results['gold_judge']}. "
                  "Every policy is sampled with the same per-prompt keys (common random numbers)."]
    if results.get("differences"):
        lines += ["", "Paired differences (same prompts, same reference samples):", ""]
        lines += differences_markdown(results["differences"], "paired bootstrap over prompts")
    if results.get("differences_gated"):
        lines += ["", "The same, gated (a degenerate sample counts as the worst):", ""]
        lines += differences_markdown(results["differences_gated"],
                                      "paired bootstrap over prompts")
    if "degeneration_gate" in results:
        lines += [""] + degeneration_markdown(results)
    if results.get("label_quality"):
        lines += ["", "Label quality by gold, before training (what each method trains on):", ""]
        lines += label_quality_markdown(results["label_quality"])
    lines += [""] + annotator_markdown(results["annotator"])
    return "\n".join(lines) + "\n"


def training_markdown(results: dict) -> str:
    """results.md of a run without a gold judge (evaluate.gold_judge=none): no GRA."""
    cfg = results["config"]
    lines = [f"Student {cfg['sft']['model']}, weak annotator {cfg['annotator']['model']} "
             f"trained on {100 * cfg['data']['labelled_fraction']:.0f}% human labels, loss "
             f"{cfg['align']['loss']} (beta {cfg['align']['beta']}). No gold judge "
             "(evaluate.gold_judge=none): nothing was sampled or judged, so no GRA.", "",
             "| method | pairs trained | mean weight | final train loss | model |",
             "|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {m['pairs']} | {num(m['mean_weight'])} | "
                     f"{num(m.get('final_loss'))} | {m['policy']} |")
    if results.get("label_quality"):
        lines += ["", "Label quality by gold, before training (what each method trains on):", ""]
        lines += label_quality_markdown(results["label_quality"])
    lines += [""] + annotator_markdown(results["annotator"])
    return "\n".join(lines) + "\n"
