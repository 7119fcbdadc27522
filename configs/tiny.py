"""Tiny random models on a few dozen generated pairs: every stage on CPU in well under two
minutes. `python launch/pipeline.py --config=configs/tiny.py --config.output_dir=DIR`."""
from cwpo_jax.stages.defaults import defaults


def get_config():
    c = defaults()
    c.data.source = "synthetic"
    c.data.num_pairs = 96
    c.data.labelled_fraction = 0.3
    c.data.eval_fraction = 0.15
    c.data.max_prompt_len = 16
    c.data.max_len = 40
    c.data.gold_judge = "lexicon"
    c.data.rater_temperature = 0.3
    c.annotator.model = "tiny:bert"
    c.sft.model = "tiny:llama"
    c.score.batch_size = 16
    for section in (c.annotator.train, c.sft.train, c.align.train):
        section.batch_size = 8
        section.warmup_steps = 2
        section.log_every = 5
        section.save_every = 0
    c.annotator.train.learning_rate = 1e-3
    c.annotator.train.epochs = 3.0
    c.sft.train.learning_rate = 1e-3
    c.sft.train.epochs = 2.0
    c.align.train.learning_rate = 1e-3
    c.align.train.epochs = 3.0
    c.align.train.batch_size = 16
    c.align.train.micro_batches = 2  # gradient accumulation end to end
    c.align.chunk_size = 16
    c.sft.chunk_size = 16
    c.align.logprob_batch_size = 16
    c.align.methods = ("human", "human_all", "weak", "weak_confidence", "top_fraction", "gold",
                       "gold_weighted", "gold_top_fraction")
    c.evaluate.max_new_tokens = 12
    c.evaluate.batch_size = 8
    c.evaluate.bootstrap = 500
    return c
