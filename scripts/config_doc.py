"""Writes docs/config.md, the reference of every config field, from cwpo_jax/stages/defaults.py
(names and defaults) and MEANINGS below (what each field does).

    python scripts/config_doc.py            # rewrite docs/config.md
    python scripts/config_doc.py --check    # exit 1 if a field has no meaning or the file is stale

A new field in defaults.py needs one entry in MEANINGS: its dotted path, or "train.<name>" for a
field of the train sections (annotator.train, sft.train, align.train). tests/test_config_doc.py
fails until it has one and docs/config.md is rewritten.
"""
from __future__ import annotations

import os
import sys

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from cwpo_jax.stages.defaults import defaults  # noqa: E402

DOC = os.path.join(ROOT, "docs", "config.md")
TRAIN_SECTIONS = ("annotator", "sft", "align")

SECTIONS = {
    "": "Run",
    "data": "data: where the preference pairs come from and how they are split",
    "mesh": "mesh: the device mesh (one size may be -1: the rest of the devices)",
    "annotator": "annotator: the weak reward model",
    "score": "score: the scoring pass (weak labels and confidences)",
    "sft": "sft: the strong model and its reference",
    "align": "align: preference optimisation, one policy per method",
    "train": "annotator.train, sft.train, align.train: the training loop of each trained stage",
    "evaluate": "evaluate: GRA against the reference",
    "sweep": "sweep: several runs aggregated",
}

MEANINGS = {
    "output_dir": "The run folder; every stage writes under it, and a rerun resumes from it. "
                  "Required.",
    "seed": "Seed of the run: splits, simulated rater labels, annotator head, batch order, "
            "LoRA init and dropout, evaluation samples.",
    # data
    "data.source": "`file` (read `data.path`), `synthetic` (generated pairs, the tiny "
                   "pipeline) or `demo` (responses sampled from the student, scored by "
                   "`data.gold_judge`).",
    "data.path": "`file`: a local file, folder or glob (JSONL, JSON, .gz, Parquet), "
                 "`hf:owner/name[/folder][@revision]`, `tfds:name`, or `hh_rlhf` / `tldr` / "
                 "`ultrafeedback` (the paper's hub datasets).",
    "data.format": "The file's schema: `hh_rlhf`, `tldr`, `ultrafeedback`, `jsonl` / `parquet` "
                   "(generic columns), `trl` (TRL's standard or conversational layouts, explicit "
                   "or implicit prompt, told apart per row) or `pairs` (this project's split "
                   "files).",
    "data.split": "Which files (and TL;DR rows) belong to the split: folder or file-name stem; "
                  "\"\" = every file.",
    "data.columns.prompt": "The file's prompt column (a string or a list of messages); \"\" = "
                           "`prompt`. jsonl, parquet and trl.",
    "data.columns.chosen": "The preferred response's column (text, or a conversation ending "
                           "with it); \"\" = `chosen`.",
    "data.columns.rejected": "The other response's column; \"\" = `rejected`.",
    "data.columns.response_a": "With `response_b` and `label` instead of chosen/rejected "
                               "(jsonl, parquet): the first response's column.",
    "data.columns.response_b": "The second response's column (with `response_a`, `label`).",
    "data.columns.label": "Which response the human preferred: 0 / \"a\" or 1 / \"b\".",
    "data.columns.id": "Optional column with a pair id (else a content hash).",
    "data.columns.system": "Optional column with a system prompt, put before the prompt.",
    "data.num_pairs": "`synthetic` / `demo`: how many pairs (prompts); `file`: a seeded subset "
                      "of this many pairs, 0 = all.",
    "data.labelled_fraction": "Share of the pairs whose human labels train the annotator; the "
                              "rest (minus eval) is the unlabelled share the methods align on.",
    "data.eval_fraction": "Share of the pairs held out; their prompts are the evaluation "
                          "prompts.",
    "data.max_eval_prompts": "At most this many distinct held-out prompts are evaluated.",
    "data.max_prompt_len": "Prompt tokens kept (cut from the left).",
    "data.max_len": "Prompt plus response tokens kept.",
    "data.gold_judge": "Controlled settings: the judge whose scores are the gold preference "
                       "(`vader`, `lexicon`, `reward_model:PATH`); simulated raters draw the "
                       "human labels from them.",
    "data.rater_temperature": "Controlled settings: temperature of the Bradley-Terry raters on "
                              "the gold scores (`scripts/rater_temperature.py` finds it for an "
                              "agreement).",
    "data.responses_per_prompt": "`demo`: responses sampled per prompt.",
    "data.pair_rule": "`demo`: `first_two`, `best_vs_random` (gold-best against a random other) "
                      "or `best_vs_rest` (gold-best against each other).",
    "data.response_max_new_tokens": "`demo`: tokens per sampled response.",
    "data.response_temperature": "`demo`: sampling temperature of the responses.",
    "data.response_top_p": "`demo`: nucleus sampling of the responses.",
    "data.sample_batch_size": "`demo`: prompts per sampling batch.",
    "data.cache_dir": "`demo`: where sampled responses are cached across runs.",
    "data.pool_seed": "Seed of the pool itself (synthetic pairs, demo prompts and responses, "
                      "a file's subset); -1 = `seed`. A sweep fixes it.",
    # mesh
    "mesh.data": "Data-parallel axis size.",
    "mesh.fsdp": "Fully sharded data-parallel axis size (parameters sharded, batch split).",
    "mesh.tensor": "Tensor-parallel axis size.",
    # annotator
    "annotator.model": "HF folder, hub id `owner/name`, `.gguf` file, `pkg:NAME` or "
                       "`tiny:<family>` (random tiny model). Required.",
    "annotator.pooling": "Encoders: \"\" (the pooler, as BertForSequenceClassification), "
                         "`mean`, `cls` or `pooler`.",
    "annotator.train_backbone": "False: train the scalar head on a frozen backbone.",
    # score
    "score.batch_size": "Pairs per scoring batch.",
    "score.tau": "Saturation margin of confidence C3 = min(|delta| / tau, 1).",
    "score.packed": "Pack both sequences of every pair end to end into rows (no padding "
                    "computed); False: padded chosen / rejected rows.",
    "score.max_segments": "At most this many sequences per packed row.",
    # sft
    "sft.model": "The strong model (same forms as `annotator.model`); its SFT result is the "
                 "reference. Required.",
    "sft.enabled": "False: the given model already is the reference (no SFT).",
    "sft.chunk_size": "Chunked log-probs: sequence positions per LM-head chunk; 0 = full logits.",
    # align
    "align.loss": "Pair loss (`cwpo_jax.losses.PAIR_LOSS_TABLE`), by this project's name or "
                  "TRL's `loss_type` (`sigmoid` = `dpo`); several, comma-separated "
                  "(`sigmoid,sft`), train on their weighted sum.",
    "align.loss_weights": "One weight per loss of `align.loss`; () = all 1.",
    "align.beta": "The loss's beta (> 0).",
    "align.label_smoothing": "cDPO's and AOT's smoothing, robust DPO's flip rate, EXO's "
                             "epsilon; in [0, 0.5).",
    "align.gamma": "SimPO's target reward margin.",
    "align.discopop_tau": "DiscoPOP's temperature.",
    "align.f_divergence_type": "f-DPO's regulariser: `reverse_kl` (plain DPO), `forward_kl`, "
                               "`js_divergence`, `alpha_divergence`.",
    "align.f_alpha_divergence_coef": "The alpha of `alpha_divergence`.",
    "align.ld_alpha": "LD-DPO: response tokens past the pair's shared length count this much in "
                      "the log-probs; 1 = plain sums.",
    "align.use_weighting": "WPO: each pair's loss times exp(mean aligned token log-prob) of both "
                           "responses (no gradient), then times its confidence weight.",
    "align.normalize": "False: the paper's mean(C l); True: sum(C l) / sum(C) per batch.",
    "align.confidence": "Confidence weight of `weak_confidence`: `c1` = 2 sigmoid(|delta|) - 1, "
                        "`c2` = sigmoid(|delta|), `c3` = min(|delta| / tau, 1).",
    "align.top_fraction": "`top_fraction`: the share of most confident weak labels kept.",
    "align.chunk_size": "Chunked log-probs: sequence positions per LM-head chunk; 0 = full logits.",
    "align.logprob_batch_size": "Pairs per batch of the log-prob passes (reference, movement).",
    "align.packed_pairs": "One row per pair (prompt once, response-only LM head); False: "
                          "separate chosen and rejected rows (sliding-window models).",
    "align.shared_prefix": "Run the tokens most prompts start with once per batch (packed "
                           "rows only).",
    "align.lora_rank": "> 0: train LoRA adapters of this rank only; 0 = full fine-tuning.",
    "align.lora_alpha": "LoRA scale numerator (scale alpha / rank).",
    "align.lora_dropout": "Dropout on the adapters' input, in [0, 1).",
    "align.lora_targets": "Linear maps that get adapters (`q_proj`, `v_proj`, ...).",
    "align.lora_layers": "Layers with adapters (negative from the top); () = all.",
    "align.frozen_cache_gb": "With adapters above layer k only: cache layers 0..k-1's output "
                             "once if it fits in this many GB of host memory; 0 = off.",
    "align.max_pairs": "Train every method on the same seeded subset of this many unlabelled "
                       "pairs; 0 = all.",
    "align.methods": "The methods, one policy each: `human`, `human_all`, `weak`, "
                     "`weak_confidence`, `top_fraction`, `gold` (controlled settings).",
    # train sections
    "train.learning_rate": "Peak learning rate (AdamW).",
    "train.warmup_steps": "Linear warm-up steps.",
    "train.schedule": "`cosine` (decay to 0 after warm-up) or `constant`.",
    "train.weight_decay": "AdamW weight decay.",
    "train.grad_clip": "Global gradient-norm clip; 0 = none.",
    "train.batch_size": "Global batch (pairs or sequences) per optimizer step.",
    "train.micro_batches": "Gradient accumulation: batch_size / micro_batches rows per pass.",
    "train.epochs": "Passes over the data.",
    "train.max_steps": "> 0 caps the number of steps.",
    "train.compute_dtype": "`float32` or `bfloat16` (parameters stay float32).",
    "train.scan_layers": "Llama family: layers under one `lax.scan` (one layer compiled).",
    "train.remat": "Backward-pass activations: `none` keeps them, `full` recomputes each layer, "
                   "`dots` keeps the matmul outputs.",
    "train.frozen_dtype": "Weights the stage does not train (LoRA's base, a frozen backbone): "
                          "`bfloat16` holds them in half the memory (rounded once).",
    "train.log_every": "Steps between metric records (metrics.jsonl, TensorBoard).",
    "train.save_every": "Steps between checkpoints; 0 = only at the end.",
    "train.keep_checkpoints": "Checkpoints kept.",
    # evaluate
    "evaluate.gold_judge": "Judge of GRA: `vader`, `lexicon`, `reward_model:PATH` or `none` (no "
                           "sampling, no GRA; models and training metrics still written). \"\" "
                           "= `data.gold_judge` in the controlled settings; required for "
                           "`data.source=file`.",
    "evaluate.max_new_tokens": "Tokens per sampled response.",
    "evaluate.temperature": "Sampling temperature.",
    "evaluate.top_p": "Nucleus sampling.",
    "evaluate.batch_size": "Prompts per sampling batch.",
    "evaluate.bootstrap": "Bootstrap resamples of the GRA intervals.",
    "evaluate.samples_per_prompt": "k responses per prompt from each policy and the reference; "
                                   "a prompt's GRA is the share of k x k comparisons won.",
    "evaluate.heldout_pairs": "Gold-ordered eval pairs for the held-out implicit-reward "
                              "accuracy, spread over prompts; 0 = all.",
    # sweep
    "sweep.runs": "((labelled_fraction, seed), ...): one run each in "
                  "`output_dir/frac<f>_seed<s>/`, aggregated; () = one run.",
}


def _fields(cfg, prefix=""):
    for key in cfg.keys():  # sorted by ConfigDict
        value = cfg[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from _fields(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def fields() -> dict[str, object]:
    """Every field of defaults() by dotted path, with its default."""
    return dict(_fields(defaults()))


def meaning_key(path: str) -> str:
    """The MEANINGS key of a field: train sections share "train.<name>"."""
    parts = path.split(".")
    if len(parts) == 3 and parts[0] in TRAIN_SECTIONS and parts[1] == "train":
        return "train." + parts[2]
    return path


def undocumented() -> list[str]:
    return [p for p in fields() if meaning_key(p) not in MEANINGS]


def unused_meanings() -> list[str]:
    keys = {meaning_key(p) for p in fields()}
    return [k for k in MEANINGS if k not in keys]


def _section(path: str) -> str:
    key = meaning_key(path)
    return "" if "." not in key else key.split(".")[0]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    all_fields = fields()
    lines = ["# Config reference", "",
             "Generated by `python scripts/config_doc.py` from `cwpo_jax/stages/defaults.py`; "
             "`tests/test_config_doc.py` fails when a field is missing here or this file is "
             "stale. Presets in `configs/` start from these defaults and override some; any "
             "field can be set on the command line, `--config.align.beta=0.1`, "
             "`--config.align.methods=\"('human','weak_confidence')\"`. `validate` "
             "(`cwpo_jax/stages/config.py`) refuses unknown fields and bad values before any "
             "compute, one line per problem."]
    for section, title in SECTIONS.items():
        paths = [p for p in all_fields if _section(p) == section]
        if section == "train":
            lines += ["", f"## {title}", "",
                      "| field | annotator | sft | align | meaning |", "|---|---|---|---|---|"]
            names = sorted({p.split(".")[2] for p in paths})
            for name in names:
                values = [f"`{all_fields[f'{s}.train.{name}']!r}`" for s in TRAIN_SECTIONS]
                lines.append(f"| `train.{name}` | {' | '.join(values)} | "
                             f"{_cell(MEANINGS['train.' + name])} |")
            continue
        lines += ["", f"## {title}", "", "| field | default | meaning |", "|---|---|---|"]
        for path in paths:
            lines.append(f"| `{path}` | `{all_fields[path]!r}` | "
                         f"{_cell(MEANINGS[meaning_key(path)])} |")
    missing = [p for p in all_fields if _section(p) not in SECTIONS]
    if missing:
        raise ValueError(f"config fields in no section of SECTIONS: {missing}")
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    problems = [f"{p}: no entry in MEANINGS (scripts/config_doc.py)" for p in undocumented()]
    problems += [f"{k}: in MEANINGS but no such config field" for k in unused_meanings()]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    text = render()
    if "--check" in argv:
        with open(DOC, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{DOC} is stale: run python scripts/config_doc.py", file=sys.stderr)
                return 1
        return 0
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {DOC} ({len(fields())} fields)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
