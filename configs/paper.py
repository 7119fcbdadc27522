"""The paper's settings (runnable where a hub or local copies of data and models exist).

--config=configs/paper.py:DATASET,PAIR with
  DATASET in hh_rlhf, harmless, helpful, tldr, ultrafeedback
  PAIR    in opt (OPT-125M annotator -> OPT-1.3B student), qwen (Qwen2.5-0.5B -> Qwen2.5-7B)
Hyperparameters from the paper (docs/method.md): annotator BT lr 1e-5 batch 32 full
fine-tuning; student SFT lr 1e-5; preference lr 5e-6, beta 0.5, cosine, 100 warm-up steps,
weight decay 0.05, LoRA r=8 alpha=16 dropout 0.05 on q_proj/v_proj, 4 epochs; 30% labelled;
evaluation at temperature 0.95 and up to 512 new tokens with a gold reward model.
"""
from cwpo_jax.stages.defaults import defaults

DATASETS = {
    # name: (path or hub short name, format, split, max_len, gold reward model)
    "hh_rlhf": ("hh_rlhf", "hh_rlhf", "train", 512, "Skywork/Skywork-Reward-V2-Llama-3.1-8B"),
    "harmless": ("hf:Anthropic/hh-rlhf/harmless-base", "hh_rlhf", "train", 512,
                 "Skywork/Skywork-Reward-V2-Llama-3.1-8B"),
    "helpful": ("hf:Anthropic/hh-rlhf/helpful-base", "hh_rlhf", "train", 512,
                "Skywork/Skywork-Reward-V2-Llama-3.1-8B"),
    "tldr": ("tldr", "tldr", "train", 1024,
             "OpenAssistant/reward-model-deberta-v3-large-v2"),
    "ultrafeedback": ("ultrafeedback", "ultrafeedback", "train_prefs", 512,
                      "Skywork/Skywork-Reward-V2-Llama-3.1-8B"),
}
PAIRS = {
    "opt": ("facebook/opt-125m", "facebook/opt-1.3b"),
    "qwen": ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B"),
}


def get_config(arg: str = "hh_rlhf,opt"):
    dataset, pair = (arg.split(",") + ["opt"])[:2]
    if dataset not in DATASETS or pair not in PAIRS:
        raise ValueError(f"configs/paper.py:{arg}: expected DATASET,PAIR with DATASET in "
                         f"{sorted(DATASETS)} and PAIR in {sorted(PAIRS)}")
    path, fmt, split, max_len, gold_rm = DATASETS[dataset]
    weak, strong = PAIRS[pair]
    c = defaults()
    c.data.source = "file"
    c.data.path, c.data.format, c.data.split = path, fmt, split
    c.data.max_len, c.data.max_prompt_len = max_len, max_len // 2
    c.data.labelled_fraction = 0.3
    c.annotator.model = weak
    c.sft.model = strong
    c.align.methods = ("human", "human_all", "weak", "weak_confidence")
    c.align.lora_rank = 8
    c.align.train.compute_dtype = "bfloat16"
    c.sft.train.compute_dtype = "bfloat16"
    c.mesh.fsdp = -1  # shard the strong model's weights over all chips
    c.mesh.data = 1
    c.evaluate.gold_judge = f"reward_model:{gold_rm}"
    return c
