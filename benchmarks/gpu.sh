#!/usr/bin/env bash
# The accelerator check of BENCHMARKS.md: bf16 DPO train steps of a random ~1.1B Llama-shaped
# model (dpo_step.py --model=llama1b) on one GPU, MFU against a bf16 matmul peak measured in the
# same process, and the device allocator's peak memory. Three files in $OUT_DIR: versions.txt,
# results.jsonl (one JSON line per variant, with its name) and log.txt (every run's output).
#
#   bash benchmarks/gpu.sh                      # on a GPU host with jax[cuda] installed
#   MODEL=tiny STEPS=1 bash benchmarks/gpu.sh   # the same script as a CPU dry run
#   PYTHON=python bash benchmarks/gpu.sh        # another interpreter (default: python3)
#
# Sizes: 8 pairs of 256 prompt + 256 completion tokens per step (8 x 768 packed tokens), full
# fine-tuning, AdamW with fp32 master weights and moments (1.1B x 16 bytes = 17.6 GB).
# BATCH, PROMPT_LEN and COMPLETION_LEN override them (the tests' dry run uses small ones).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-llama1b}
STEPS=${STEPS:-6}
BATCH=${BATCH:-8}
PROMPT_LEN=${PROMPT_LEN:-256}
COMPLETION_LEN=${COMPLETION_LEN:-256}
OUT_DIR=${OUT_DIR:-${OUT:-runs/gpu_bench}}
PYTHON=${PYTHON:-python3}
# Each variant is also compiled for this launch/plan.py target (auto: the GPU found here), and
# the plan's predicted peak memory and roofline step time are printed beside the measurements.
PLAN_TARGET=${PLAN_TARGET:-auto}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/log.txt
RESULTS=$OUT_DIR/results.jsonl
: > "$LOG"
: > "$RESULTS"
"$PYTHON" - <<'PY' | tee "$OUT_DIR/versions.txt"
import flax, jax, optax, orbax.checkpoint, transformers
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "orbax", orbax.checkpoint.__version__, "transformers", transformers.__version__)
print("devices:", jax.devices())
PY
run() {  # name, extra flags; the run's last line is dpo_step's JSON
    local name=$1 line
    shift
    echo "== $name" >> "$LOG"
    line=$("$PYTHON" benchmarks/dpo_step.py --model="$MODEL" --dtype=bfloat16 --batch="$BATCH" \
        --prompt-len="$PROMPT_LEN" --completion-len="$COMPLETION_LEN" --steps="$STEPS" \
        --logprobs=chunked --chunk-size="$COMPLETION_LEN" --plan-target="$PLAN_TARGET" "$@" \
        2>&1 | tee -a "$LOG" | tail -1)
    echo "{\"variant\": \"$name\", ${line#\{}" | tee -a "$RESULTS"
}
run packed_cached --layout=packed --reference=cached
run rows_cached --layout=rows --reference=cached
run packed_online --layout=packed --reference=online
run packed_cached_remat --layout=packed --reference=cached --remat
# Compile time and step time with the 22 layers under one scan instead of unrolled.
run packed_cached_scan --layout=packed --reference=cached --scan-layers
# Measured against the plan's prediction for the same program (launch/plan.py's compiler
# estimate; the roofline is a lower bound on the step time).
"$PYTHON" - "$RESULTS" <<'PY'
import json, sys
def num(value, spec):
    return "-" if value is None else format(value, spec)
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'variant':<22} {'step s':>8} {'plan roofline s':>16} {'peak MB':>9} {'plan peak MB':>13}")
for r in rows:
    print(f"{r['variant']:<22} {r['step_s']:>8.4f} {num(r.get('plan_roofline_step_s'), '.4f'):>16} "
          f"{r['peak_device_mb']:>9.0f} {num(r.get('plan_peak_mb'), '.0f'):>13}"
          + (f"  ({r['plan_note']})" if r.get("plan_note") else "")
          + (f"  (plan: {r['plan_error']})" if r.get("plan_error") else ""))
PY
