#!/usr/bin/env bash
# The accelerator check of BENCHMARKS.md: bf16 DPO train steps of a random ~1.1B Llama-shaped
# model (dpo_step.py --model=llama1b) on one GPU, MFU against a bf16 matmul peak measured in the
# same process, and the device allocator's peak memory. One JSON line per variant in $OUT_DIR.
#
#   bash benchmarks/gpu.sh                  # on a GPU host with jax[cuda12] installed
#   MODEL=tiny STEPS=2 bash benchmarks/gpu.sh   # the same script as a CPU dry run
#
# Sizes: 8 pairs of 256 prompt + 256 completion tokens per step (8 x 768 packed tokens), full
# fine-tuning, AdamW with fp32 master weights and moments (1.1B x 16 bytes = 17.6 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-llama1b}
STEPS=${STEPS:-6}
OUT_DIR=${OUT_DIR:-${OUT:-runs/gpu_bench}}
mkdir -p "$OUT_DIR"
python - <<'EOF'
import jax
print("devices:", jax.devices())
EOF
run() {  # name, extra flags
    local name=$1; shift
    python benchmarks/dpo_step.py --model="$MODEL" --dtype=bfloat16 --batch=8 \
        --prompt-len=256 --completion-len=256 --steps="$STEPS" --logprobs=chunked \
        --chunk-size=256 "$@" 2>&1 | tee "$OUT_DIR/$name.log" | tail -1 > "$OUT_DIR/$name.json"
    echo "$name: $(cat "$OUT_DIR/$name.json")"
}
run packed_cached --layout=packed --reference=cached
run rows_cached --layout=rows --reference=cached
run packed_online --layout=packed --reference=online
run packed_cached_remat --layout=packed --reference=cached --remat
# Compile time and step time with the 22 layers under one scan instead of unrolled.
run packed_cached_scan --layout=packed --reference=cached --scan-layers
