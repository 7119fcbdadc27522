"""The reward-KL frontier: is CW-DPO's win over human-label DPO label quality or movement?
(docs/experiments.md, "The frontier": the decision rule, the prediction and the cost.)

python scripts/frontier.py --out=runs/frontier

Each method is trained at several learning rates (the one knob), so that its students move
different distances from the reference; GRA (raw and gated) is then compared at matched KL, per
seed and over SEEDS. demo_quick's pool, annotator, beta 0.1 and one epoch of LoRA DPO (about 30
steps of 8 pairs); four samples per prompt. The learning rates were chosen from the `gold` and
`human` arms' recorded movement only (docs/experiments.md: at lr 2e-3, `gold` KL 9.3-10.5,
`human` 1.7-2.2): a KL that grows about as lr^1.2 puts the gold-like arms' grid at
{7.5e-4, 1.5e-3, 3e-3, 6e-3} (about 3, 7, 16, 39 nats for `gold`) and `human`'s one octave up,
{1.5e-3, 3e-3, 6e-3, 1.2e-2} (about 1.4, 3.3, 7.7, 18 nats), so their KL ranges overlap on about
3-18 nats. CW-DPO takes the gold grid (its labels, like gold's, are a consistent function of the
text); the bounding oracles run at one rate (the budget: the cost estimate in
docs/experiments.md).

get_config() is one point of the frontier (a normal pipeline config, runnable alone);
scripts/frontier.py sets the seed, output folder, learning rate and methods of every point.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo_quick

SEEDS = (0, 1, 2)
GOLD_GRID = (7.5e-4, 1.5e-3, 3e-3, 6e-3)
HUMAN_GRID = (1.5e-3, 3e-3, 6e-3, 1.2e-2)
# method -> its learning rates, in the order they run (cheapest methods' points first matter
# little: every point of a seed costs about the same)
LEARNING_RATES = {"gold": GOLD_GRID, "human": HUMAN_GRID, "weak_confidence": GOLD_GRID,
                  "gold_weighted": (1.5e-3,), "gold_top_fraction": (1.5e-3,)}


def get_config():
    c = demo_quick.get_config()
    c.data.pool_seed = 0  # one pool (demo_quick's) for every seed; the seed draws the rest
    c.align.methods = tuple(LEARNING_RATES)
    c.align.train.learning_rate = 1.5e-3
    c.evaluate.samples_per_prompt = 4
    return c
