"""Defaults shared by every preset: configs/*.py start from `defaults()` and override.

Sections: data, mesh, annotator, score, sft, align, evaluate, sweep. `validate` (stages/config.py)
rejects unknown keys and out-of-range values before any compute.
"""
import ml_collections


def train_section(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.learning_rate = 1e-5
    c.warmup_steps = 100
    c.schedule = "cosine"
    c.weight_decay = 0.05
    c.grad_clip = 1.0
    c.batch_size = 32  # global batch (pairs or sequences) per optimizer step
    c.micro_batches = 1  # gradient accumulation: batch_size / micro_batches rows per pass
    c.epochs = 1.0
    c.max_steps = 0  # > 0 caps the number of steps
    c.compute_dtype = "float32"  # or "bfloat16" (params stay float32)
    c.scan_layers = False  # Llama family: layers under one lax.scan (one layer compiled, not L)
    # Activation memory of the backward pass: "none" keeps every layer's activations, "full"
    # recomputes each layer from its input, "dots" keeps only the matmul outputs.
    c.remat = "none"
    # Weights the stage does not train (LoRA's base model, a frozen annotator backbone):
    # "bfloat16" holds them in half the memory; the trained weights keep float32 masters.
    c.frozen_dtype = "float32"
    c.log_every = 10
    c.save_every = 500
    c.keep_checkpoints = 2
    c.update(overrides)
    return c


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.output_dir = ""
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "file"  # "file": read_preferences; "synthetic": generated; "demo": sampled
    c.data.path = ""
    c.data.format = "hh_rlhf"
    c.data.split = "train"
    # The file's column names for data.format jsonl, parquet or trl ("" = the field's own
    # name): prompt/chosen/rejected, or (jsonl, parquet) prompt/response_a/response_b/label,
    # label 0/"a" or 1/"b" naming the response the human preferred; id and system optional.
    c.data.columns = ml_collections.ConfigDict(dict(
        prompt="", chosen="", rejected="", response_a="", response_b="", label="", id="",
        system=""))
    c.data.num_pairs = 0  # synthetic / demo: how many pairs; file: 0 = all
    c.data.labelled_fraction = 0.3
    c.data.eval_fraction = 0.05
    c.data.max_eval_prompts = 256
    c.data.max_prompt_len = 256
    c.data.max_len = 512
    c.data.gold_judge = ""  # set for controlled settings (synthetic/demo): simulated raters
    c.data.rater_temperature = 0.0
    # demo source: responses sampled from the student (cached across runs), paired per prompt
    # by pair_rule: "first_two", "best_vs_random" (gold-best vs a random other) or
    # "best_vs_rest" (gold-best vs each other response)
    c.data.responses_per_prompt = 2
    c.data.pair_rule = "first_two"
    c.data.response_max_new_tokens = 48
    c.data.response_temperature = 0.8
    c.data.response_top_p = 0.95
    c.data.sample_batch_size = 32
    c.data.cache_dir = "~/.cache/cwpo_jax"
    # Seed of the pool itself (synthetic pairs; demo prompts and sampled responses; file
    # subsample); -1 = the run's seed. A sweep fixes it so its runs share one pool.
    c.data.pool_seed = -1

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.annotator = ml_collections.ConfigDict()
    c.annotator.model = ""  # HF dir / hub id / .gguf; "tiny:<family>" builds a random tiny one
    c.annotator.pooling = ""  # encoders: "" = pooler (as BertForSequenceClassification), mean, cls
    c.annotator.train_backbone = True  # False: train the scalar head on a frozen backbone
    c.annotator.train = train_section(learning_rate=1e-5, batch_size=32, epochs=4.0)

    c.score = ml_collections.ConfigDict(dict(batch_size=64, tau=1.0))
    # Packed scoring: both sequences of every pair packed end to end into rows as long as the
    # longest (its bucket), 2 x batch_size rows per batch, at most max_segments sequences per
    # row; no padding is computed. False: chosen / rejected rows of batch_size pairs, padded to
    # the batch's bucket.
    c.score.packed = True
    c.score.max_segments = 16

    c.sft = ml_collections.ConfigDict()
    c.sft.model = ""  # the strong model; its SFT result is the reference
    c.sft.enabled = True  # False: the given model already is the SFT/reference model
    c.sft.chunk_size = 128  # chunked log-probs; 0 = full logits
    c.sft.train = train_section(learning_rate=1e-5, batch_size=32, epochs=1.0)

    c.align = ml_collections.ConfigDict()
    # The per-pair loss (losses.PAIR_LOSS_TABLE), by our name or TRL's loss_type (sigmoid =
    # dpo, robust = rdpo); several separated by commas ("sigmoid,sft") train on their mixture
    # sum_k loss_weights[k] * l_k (MPO; RPO is "sigmoid,sft"). aot and aot_unpaired sort the
    # batch and so take no per-pair weights: methods that weight pairs are refused with them.
    c.align.loss = "dpo"
    c.align.loss_weights = ()  # one weight per loss of align.loss; () = all 1
    c.align.beta = 0.5
    # cdpo's and aot's smoothing, rdpo's / robust's flip rate, exo_pair's epsilon (must be > 0)
    c.align.label_smoothing = 0.0
    c.align.gamma = 0.0  # simpo's target margin
    c.align.discopop_tau = 0.05  # discopop's temperature
    # f-DPO's regulariser: reverse_kl (plain DPO), forward_kl, js_divergence, alpha_divergence
    # (its alpha: f_alpha_divergence_coef); for the losses of losses.F_DIVERGENCE_LOSSES.
    c.align.f_divergence_type = "reverse_kl"
    c.align.f_alpha_divergence_coef = 0.5
    # LD-DPO: response tokens past the pair's shared length count ld_alpha times in the policy
    # and reference log-probs; 1 = plain sums (TRL's ld_alpha=None).
    c.align.ld_alpha = 1.0
    # WPO: each pair's loss times exp(mean aligned token log-prob) of both responses under the
    # policy (no gradient), and then times its confidence weight.
    c.align.use_weighting = False
    c.align.normalize = False
    c.align.confidence = "c1"
    c.align.top_fraction = 0.3
    c.align.chunk_size = 128  # chunked log-probs; 0 = full logits
    # Pairs per batch of the log-prob passes (reference, evaluation's student movement).
    c.align.logprob_batch_size = 64
    # One packed row per pair (prompt once, response-only LM head); False = chosen and rejected
    # as separate rows. Needs a model without sliding-window attention.
    c.align.packed_pairs = True
    # Packed rows leave out the tokens most prompts start with (a chat template's system
    # prompt): they run once per batch and those rows attend to their keys and values. Off:
    # on CPU it was no faster per step and compiles longer (docs/experiments.md).
    c.align.shared_prefix = False
    c.align.lora_rank = 0  # > 0 trains LoRA adapters only
    c.align.lora_alpha = 16.0
    c.align.lora_dropout = 0.05
    c.align.lora_targets = ("q_proj", "v_proj")
    # Layers with adapters (negative = from the top, () = all). Adapters in the top k layers
    # only also end the backward pass there (the frozen layers below run forward only).
    c.align.lora_layers = ()
    # With adapters above layer k only, layers 0..k-1 run once per pool and training starts
    # from their output (stages/frozen_layers.py), if it fits in this much host memory; 0 = off.
    c.align.frozen_cache_gb = 4.0
    # At most this many unlabelled pairs train each method: a seeded subset by pair id, the
    # same for every method (label quality, the reference pass and each epoch cover only it;
    # the annotator's diagnostics keep the whole unlabelled share); 0 = all of them.
    c.align.max_pairs = 0
    # name -> label source; "human_all" trains on human labels of labelled + unlabelled pairs
    c.align.methods = ("human", "weak", "weak_confidence")
    c.align.train = train_section(learning_rate=5e-6, batch_size=32, epochs=4.0)

    c.evaluate = ml_collections.ConfigDict()
    # Scores the sampled responses for GRA: vader, lexicon, reward_model:PATH, or none (no
    # sampling and no GRA; the aligned models and training metrics are still written).
    # "" = data.gold_judge in the controlled settings; required for data.source=file.
    c.evaluate.gold_judge = ""
    c.evaluate.max_new_tokens = 512
    c.evaluate.temperature = 0.95
    c.evaluate.top_p = 1.0
    c.evaluate.batch_size = 16
    c.evaluate.bootstrap = 2000
    # k responses per prompt from each policy and from the reference; GRA per prompt is the
    # share of the k x k comparisons won, so k > 1 tightens the interval at equal prompts.
    c.evaluate.samples_per_prompt = 1
    # Gold-ordered eval pairs for the held-out implicit-reward accuracy (one log-prob pass per
    # policy over them): at most this many, spread over the prompts; 0 = all.
    c.evaluate.heldout_pairs = 0

    # Several runs of the whole pipeline, one (labelled_fraction, seed) per entry, each in
    # output_dir/frac<fraction>_seed<seed>/, aggregated into output_dir/results.*;
    # empty = one run in output_dir with data.labelled_fraction and seed.
    c.sweep = ml_collections.ConfigDict()
    c.sweep.runs = ()
    return c
