"""Stage 0, prepare: preference pool -> labelled / unlabelled / eval splits on disk.

Sources: "file" (any schema `read_preferences` knows, with data.columns naming the file's
columns; the stored order is the human label),
"synthetic" (generated pairs for the tiny pipeline) and "demo" (responses sampled from the
student, see stages/demo_data.py). In the controlled settings (synthetic, demo) a gold judge
scores both responses and simulated raters (Bradley-Terry on the gold scores, temperature fixed
in the config) give the human label; the gold scores are kept in data/gold.json.
"""
from __future__ import annotations

import json

import numpy as np

from cwpo_jax import gold as gold_lib
from cwpo_jax.data import PreferencePair, content_id, load_preferences
from cwpo_jax.data.splits import seeded_rank, split_pairs
from cwpo_jax.io_utils import atomic_open, write_json
from cwpo_jax.stages import run_folder
from cwpo_jax.stages.config import data_columns, pool_seed
from cwpo_jax.train.hosts import log

STAGE = "data"

TOPICS = ("the weather", "my day", "your weekend", "the city", "music", "school", "dinner",
          "the park", "my job", "the movie", "a trip", "the team", "the book", "my garden",
          "the game", "a friend")
NEUTRAL = ("the", "a", "it", "was", "is", "and", "very", "day", "time", "we", "they", "today",
           "really", "so", "this", "that", "people", "place", "thing", "quite")


def synthetic_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, response a, response b) triples: short sentences whose share of positive and
    negative words varies per response, so a sentiment judge has something to prefer."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = f"Tell me about {TOPICS[i % len(TOPICS)]} (#{i})."

        def response():
            bias = rng.uniform(-1, 1)
            words = []
            for _ in range(rng.integers(5, 13)):
                u = rng.random()
                if u < 0.25 * (1 + bias):
                    words.append(rng.choice(gold_lib.POSITIVE_WORDS))
                elif u < 0.5:
                    words.append(rng.choice(gold_lib.NEGATIVE_WORDS))
                else:
                    words.append(rng.choice(NEUTRAL))
            return " ".join(words) + "."

        a, b = response(), response()
        while b == a:
            b = response()
        out.append((prompt, a, b))
    return out


def demo_triples(prompt_responses, judge, *, rule: str, seed: int):
    """(prompt, a, b, gold a, gold b) tuples from each prompt's sampled responses; count of
    prompts dropped for lack of two distinct non-empty responses.

    rule "first_two": the first two distinct responses. "best_vs_random": the gold-best response
    against a random other (seeded by prompt), the way UltraFeedback is binarised: every pair
    then has a response that is better than a typical one. "best_vs_rest": the gold-best
    response against each other one (n - 1 pairs per prompt from the same samples)."""
    out, dropped = [], 0
    for prompt, responses in prompt_responses:
        distinct = list(dict.fromkeys(r for r in responses if r))
        if len(distinct) < 2:
            dropped += 1
            continue
        scores = judge.score([prompt] * len(distinct), distinct)
        if rule == "first_two":
            pairs = [(0, 1)]
        else:
            i = int(np.argmax(scores))
            others = [k for k in range(len(distinct)) if k != i]
            if rule == "best_vs_random":
                others = [min(others, key=lambda k: seeded_rank(f"{k}\x00{prompt}", seed))]
            pairs = [(i, j) for j in others]
        out.extend((prompt, distinct[i], distinct[j], float(scores[i]), float(scores[j]))
                   for i, j in pairs)
    return out, dropped


def label_with_raters(triples, cfg, source: str):
    """Controlled setting: gold scores + simulated raters -> pairs in human order, gold map.
    triples: (prompt, a, b), or (prompt, a, b, gold a, gold b) when already scored."""
    prompts = [t[0] for t in triples]
    if triples and len(triples[0]) == 5:
        gold_a = np.asarray([t[3] for t in triples], np.float64)
        gold_b = np.asarray([t[4] for t in triples], np.float64)
    else:
        judge = gold_lib.make_judge(cfg.data.gold_judge)
        gold_a = judge.score(prompts, [t[1] for t in triples])
        gold_b = judge.score(prompts, [t[2] for t in triples])
    ids = [content_id(source, [{"role": "user", "content": t[0]}], t[1], t[2]) for t in triples]
    human_a = gold_lib.simulate_human_labels(gold_a, gold_b, ids,
                                             temperature=cfg.data.rater_temperature,
                                             seed=cfg.seed)
    pairs, gold = [], {}
    for i, (prompt, a, b, *_) in enumerate(triples):
        chosen, rejected = (a, b) if human_a[i] else (b, a)
        g_chosen, g_rejected = (gold_a[i], gold_b[i]) if human_a[i] else (gold_b[i], gold_a[i])
        pairs.append(PreferencePair(id=ids[i], prompt=({"role": "user", "content": prompt},),
                                    chosen=chosen, rejected=rejected, source=source))
        gold[ids[i]] = [float(g_chosen), float(g_rejected)]
    decided = gold_a != gold_b
    agreement = float(np.mean(human_a[decided] == (gold_a > gold_b)[decided]))
    return pairs, gold, {"rater_gold_agreement": agreement, "gold_ties": int((~decided).sum())}


def train_word_tokenizer(texts, directory: str):
    """A small word-level tokenizer for the tiny random models (built from the data itself)."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(directory)


def _write_split(cfg, name: str, pairs) -> None:
    with atomic_open(run_folder.path(cfg, STAGE, f"{name}.jsonl")) as f:
        for p in pairs:
            f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")


@run_folder.stage(STAGE, "splits exist")
def run(cfg) -> dict:
    summary: dict = {"source": cfg.data.source}
    gold = None
    if cfg.data.source == "file":
        pairs, report = load_preferences(cfg.data.path, format=cfg.data.format,
                                         split=cfg.data.split or None,
                                         columns=data_columns(cfg) or None)
        summary["read_report"] = str(report)
        log(STAGE, f"read {len(pairs)} pairs from {cfg.data.path}: {report}")
    elif cfg.data.source == "synthetic":
        triples = synthetic_pairs(cfg.data.num_pairs, pool_seed(cfg))
        pairs, gold, stats = label_with_raters(triples, cfg, "synthetic")
        summary.update(stats)
    else:
        from cwpo_jax.stages import demo_data

        triples, dropped = demo_triples(demo_data.sampled_responses(cfg),
                                        gold_lib.make_judge(cfg.data.gold_judge),
                                        rule=cfg.data.pair_rule, seed=pool_seed(cfg))
        if dropped:
            log(STAGE, f"dropped {dropped} prompts without two distinct non-empty responses")
        pairs, gold, stats = label_with_raters(triples, cfg, "demo")
        summary.update(stats, prompts_dropped=dropped)
    if cfg.data.source == "file" and cfg.data.num_pairs and len(pairs) > cfg.data.num_pairs:
        pairs = sorted(pairs, key=lambda p: seeded_rank(p.id, pool_seed(cfg)))[:cfg.data.num_pairs]
    splits = split_pairs(pairs, seed=cfg.seed, labelled=cfg.data.labelled_fraction,
                         eval=cfg.data.eval_fraction, group_by="prompt")
    for name in ("labelled", "unlabelled", "eval"):
        _write_split(cfg, name, getattr(splits, name))
    if gold is not None:
        write_json(run_folder.path(cfg, STAGE, "gold.json"), gold)
    if any(spec.startswith("tiny:") for spec in (cfg.annotator.model, cfg.sft.model)):
        texts = [m["content"] for p in pairs for m in p.prompt] + \
                [t for p in pairs for t in (p.chosen, p.rejected)] + ["Human:", "Assistant:"]
        train_word_tokenizer(texts, run_folder.path(cfg, STAGE, "tokenizer"))
    summary["sizes"] = splits.sizes()
    log(STAGE, f"splits {splits.sizes()}" + (
        f", rater/gold agreement {summary['rater_gold_agreement']:.1%}" if gold else ""))
    return summary
