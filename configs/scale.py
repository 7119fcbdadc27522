"""The paper's pipeline for a larger student on a named accelerator slice: the mesh, remat and
dtypes that the planner (launch/plan.py) found to fit there. docs/scaling.md has the plans.

--config=configs/scale.py:MODEL,TARGET, planned with the same TARGET first:
  python launch/plan.py --config=configs/scale.py:llama3_8b,v5p-16 --target=v5p-16
  MODEL   llama3_1b, qwen2p5_7b (the paper's Qwen2.5-7B), llama3_8b, llama3_70b; tiny (CI)
  TARGET  v5e-8, v5e-64, v5p-16, v5p-64, v6e-8, h100x8, h200x8 (8 GPUs: gpu:h100:1x1x8);
          v5e-4 (tiny only)
Annotator Qwen2.5-0.5B (full fine-tuning), 30% labels, CW-DPO with LoRA r=8 on q/v as in the
paper (docs/method.md), sequences of 512 tokens. Every train step runs its layers under one
scan (compile time does not grow with depth), in bf16 with fp32 master weights, and recomputes
each layer in the backward pass (remat=full): without it, a 7-8B model's activations at batch
32 x 512 do not fit a 16 GiB v5e chip. Where full fine-tuning of the student does not fit the
slice (v5e-8 for 7-8B; 70B on v5e-64 and 8 x H200), the SFT stage is off and the student is its
instruct release, which then is the reference model (sft.enabled=False).
Data: set data.path / data.format / evaluate.gold_judge for your run, as configs/paper.py does.
"""
from cwpo_jax.plan.targets import parse_target
from cwpo_jax.stages.defaults import defaults

STUDENTS = {  # name -> (base model, instruct model)
    "llama3_1b": ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct"),
    "qwen2p5_7b": ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct"),
    "llama3_8b": ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct"),
    "llama3_70b": ("meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct"),
    "tiny": ("tiny:llama", "tiny:llama"),
}
# target -> launch/plan.py's --target; the slices where full fine-tuning (SFT) of each student
# fits (docs/scaling.md).
TARGETS = {"v5e-4": "v5e-4", "v5e-8": "v5e-8", "v5e-64": "v5e-64", "v5p-16": "v5p-16",
           "v5p-64": "v5p-64", "v6e-8": "v6e-8", "h100x8": "gpu:h100:1x1x8",
           "h200x8": "gpu:h200:1x1x8"}
SFT_FITS = {
    "llama3_1b": set(TARGETS),
    "qwen2p5_7b": {"v5e-64", "v5p-16", "v5p-64", "v6e-8", "h100x8", "h200x8"},
    "llama3_8b": {"v5e-64", "v5p-16", "v5p-64", "v6e-8", "h100x8", "h200x8"},
    "llama3_70b": {"v5p-64"},
    "tiny": set(TARGETS),
}


def get_config(arg: str = "llama3_8b,v5p-16"):
    model, target = (arg.split(",") + [""])[:2]
    if model not in STUDENTS or target not in TARGETS or (target == "v5e-4") != (model == "tiny"):
        raise ValueError(f"configs/scale.py:{arg}: expected MODEL,TARGET with MODEL in "
                         f"{sorted(STUDENTS)} and TARGET in {sorted(TARGETS)} (v5e-4: tiny only)")
    base, instruct = STUDENTS[model]
    c = defaults()
    c.data.source = "file"
    c.data.max_len, c.data.max_prompt_len = 512, 256
    c.data.labelled_fraction = 0.3
    c.annotator.model = "tiny:bert" if model == "tiny" else "Qwen/Qwen2.5-0.5B"
    c.sft.enabled = target in SFT_FITS[model]
    c.sft.model = base if c.sft.enabled else instruct
    c.align.methods = ("human", "weak", "weak_confidence")
    c.align.lora_rank = 8
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # shard every weight over all chips
    for section in (c.annotator.train, c.sft.train, c.align.train):
        section.compute_dtype = "bfloat16"
        section.scan_layers = True
        section.remat = "full"
    c.evaluate.batch_size = 16  # prompts whole on every chip: a small batch
    # Global batches of 32 (the paper's), or one row per chip on larger slices.
    chips = parse_target(TARGETS[target]).num_devices
    for section in (c.annotator.train, c.sft.train, c.align.train):
        section.batch_size = max(32, chips)
    c.align.logprob_batch_size = max(64, chips)
    if model == "tiny":
        c.annotator.train.scan_layers = False  # tiny:bert is an encoder: its layers do not scan
        c.data.max_len, c.data.max_prompt_len = 64, 16
        c.evaluate.max_new_tokens = 16
        for section in (c.annotator.train, c.sft.train, c.align.train):
            section.batch_size = 8
    return c
