"""The bigger demo: three seeds at 30% labels plus the 20%-label variant, four samples per
evaluation prompt, in one command of about an hour on 2 CPU cores:

python launch/pipeline.py --config=configs/demo_full.py --config.output_dir=runs/demo_full

Same models, judge, rater temperature, methods and training settings as configs/demo_quick.py
(see there). Runs (sweep.runs, each a full pipeline in runs/demo_full/frac<f>_seed<s>/, all on
one pool of 240 sampled pairs, pool seed 0): seeds 0, 1, 2 at 30% labels, seed 0 at 20% labels.
The seed of a run draws its splits, simulated rater labels, annotator head and batch order, LoRA
init and dropout, and evaluation samples. 60 held-out prompts per run (the same ones for both
fractions of seed 0), 4 responses per prompt from every model (GRA per prompt over 4 x 4
comparisons); results.md gives mean ± sd over seeds and a 95% t-interval over seeds. Methods:
demo_quick's four plus DPO on 100% of the human labels (human_all).

Sizes were fixed before any demo_full result, from the demo_quick stage times measured on 2
cores (sampling 384 responses 94 s = 0.245 s/response; annotator 58 pairs x 10 epochs 62 s =
0.107 s/pair-epoch; alignment 358 s for 86 + 86 + 86 + 26 = 284 pair-epochs = 1.26 s/pair-epoch,
reference pass and per-method overhead included; evaluation 48 prompts x 5 models 55 s = 0.229
s/response) plus 12 s per run folder to convert the GGUF student (measured):
  pool, once:          240 prompts x 2 responses x 0.245                       =  118 s
  30% run (x 3):       72 labelled, 60 eval, 108 unlabelled pairs
    annotator          72 x 10 epochs x 0.107                                  =   77 s
    alignment          (3 x 108 + 33 top-30%) = 357 pair-epochs x 1.26         =  450 s
    evaluation         60 prompts x 4 samples x 5 models x 0.229               =  275 s
                       (batches of 48: five full batches per model)
    conversion                                                                 =   12 s
                                                                         run   =  814 s
  20% run (x 1):       48 labelled, 60 eval, 132 unlabelled pairs
    annotator 48 x 10 x 0.107 = 51 s; alignment (3 x 132 + 40) = 436 x 1.26 = 549 s;
    evaluation 275 s; conversion 12 s                                    run   =  887 s
  total 118 + 3 x 814 + 887 = 3447 s, about 57 minutes (the XLA compilation cache in
  ~/.cache/cwpo_jax/xla and the pool cache make a second sweep faster).
human_all (labelled + unlabelled pairs: 180 pair-epochs per run, 60 x 4 more evaluation
responses) adds about 180 x 1.26 + 240 x 0.229 = 282 s per run at these rates, 1128 s in all;
packed pair rows (prefix sharing, align.packed_pairs, added after demo_quick was timed) cut the
alignment cost, so the sweep was expected at 60-75 minutes. The measured time is in README.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo_quick


def get_config():
    c = demo_quick.get_config()
    c.data.num_pairs = 240
    c.data.eval_fraction = 0.25
    c.data.max_eval_prompts = 60
    c.evaluate.samples_per_prompt = 4
    c.align.methods = ("human", "human_all", "weak", "weak_confidence", "top_fraction")
    c.sweep.runs = ((0.3, 0), (0.3, 1), (0.3, 2), (0.2, 0))
    return c
