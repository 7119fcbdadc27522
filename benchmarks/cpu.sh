#!/usr/bin/env bash
# Every CPU figure of BENCHMARKS.md in one go (about 25 minutes on 2 cores). Run it on a quiet
# machine: other processes on the cores slow PyTorch's threads far more than XLA's.
# compare_trl needs the optional stack: pip install -r requirements-trl.txt
# Each benchmark's final JSON line is appended to $OUT_DIR/results.jsonl; full logs beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-runs/cpu_bench}
mkdir -p "$OUT_DIR"
run() {  # name, command...
    local name=$1; shift
    echo "== $name: $*"
    "$@" > "$OUT_DIR/$name.log" 2>&1
    tail -1 "$OUT_DIR/$name.log" | tee -a "$OUT_DIR/results.jsonl"
}
SHAPE=(--model=smollm2 --batch=4 --prompt-len=32 --completion-len=32 --steps=6)
# The DPO step side by side with TRL: same weights, ids, batch, lengths, fp32, threads.
run trl_cached_rows python benchmarks/compare_trl.py "${SHAPE[@]}" --reference=cached --layout=rows
run trl_cached_rows_plain python benchmarks/compare_trl.py "${SHAPE[@]}" --reference=cached \
    --layout=rows --logprobs=plain
run trl_cached_packed python benchmarks/compare_trl.py "${SHAPE[@]}" --reference=cached --layout=packed
run trl_online_packed python benchmarks/compare_trl.py "${SHAPE[@]}" --reference=online --layout=packed
# Log-prob memory and the remaining variants of the JAX step alone.
run step_rows_plain python benchmarks/dpo_step.py "${SHAPE[@]}" --layout=rows --logprobs=plain
run step_packed_lora python benchmarks/dpo_step.py "${SHAPE[@]}" --lora
run step_packed_remat python benchmarks/dpo_step.py "${SHAPE[@]}" --remat
run step_packed_scan python benchmarks/dpo_step.py "${SHAPE[@]}" --scan-layers
# Where the step's time goes, by XLA instruction (trace and HLO kept in $OUT_DIR/profile).
run step_profile python benchmarks/dpo_step.py "${SHAPE[@]}" --profile="$OUT_DIR/profile"
# The annotator's scoring pass (JAX vs PyTorch at equal shapes) and the sampler.
run score python benchmarks/score.py --models=minilm,smollm2 --pairs=256 --batch=16 --length=128
run generate python benchmarks/generate.py --models=smollm2 --batch-sizes=1,8,32 \
    --prompt-len=32 --new-tokens=64
