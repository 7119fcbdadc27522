"""The bigger demo: more prompts, pairs and evaluation prompts, every method, two epochs.

Same models, judge and rater temperature as configs/demo_quick.py (see there); sized for about an
hour on 2 CPU cores. Other seeds and the 20%-label variant are overrides of the same preset:
  --config.seed=1   --config.data.labelled_fraction=0.2
"""
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo_quick  # noqa: E402


def get_config():
    c = demo_quick.get_config()
    c.data.num_pairs = 600
    c.data.eval_fraction = 0.2
    c.data.max_eval_prompts = 120
    c.align.methods = ("human", "human_all", "weak", "weak_confidence", "top_fraction")
    c.align.train.epochs = 2.0
    c.annotator.train.epochs = 8.0
    return c
