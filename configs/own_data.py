"""Your own preference file with the demo's small models: SmolLM2-135M-Instruct as the student
(its instruct weights are the reference, aligned with LoRA) and all-MiniLM-L6-v2 as the weak
annotator. The command line names the file, its format and the judge of GRA:

python launch/pipeline.py --config=configs/own_data.py --config.output_dir=runs/mine \\
    --config.data.path=my_pairs.jsonl --config.evaluate.gold_judge=none

data.format is `trl` here (TRL's standard and conversational layouts, told apart per row); use
`jsonl` / `parquet` with data.columns.* for other column names, `hh_rlhf`, `tldr` or
`ultrafeedback` for those datasets. Swap in your models with --config.sft.model=... and
--config.annotator.model=... (HF folders, hub ids or .gguf files); field reference:
docs/config.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo_quick


def get_config():
    c = demo_quick.get_config()
    c.data.source = "file"
    c.data.format = "trl"
    c.data.num_pairs = 0  # all pairs of the file
    c.data.gold_judge = ""  # no simulated raters: the file's order is the human label
    c.data.rater_temperature = 0.0
    c.data.eval_fraction = 0.05
    c.data.max_eval_prompts = 128
    c.data.max_prompt_len = 256
    c.data.max_len = 512
    c.align.methods = ("human", "weak", "weak_confidence")
    c.evaluate.max_new_tokens = 128
    return c
