#!/usr/bin/env bash
# Run one stage (default: the whole pipeline) on every worker of a TPU VM pod slice.
# JAX's multi-controller runtime finds the other workers itself (jax.distributed.initialize()
# auto-detects TPU pods; see cwpo_jax.sharding.maybe_initialize_distributed).
#
#   launch/tpu_pod.sh TPU_NAME ZONE REPO_DIR_ON_WORKERS CONFIG [--config.x=y ...]
# e.g.
#   launch/tpu_pod.sh my-v5e-256 us-west4-a ~/cwpo_jax configs/paper.py:hh_rlhf,qwen \
#       --config.output_dir=gs://bucket/run1
set -euo pipefail
tpu=$1 zone=$2 repo=$3 config=$4
shift 4
stage=${STAGE:-pipeline}
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd $repo &&
  pip install -q -r requirements.txt 'jax[tpu]==0.10.2' &&
  CWPO_DISTRIBUTED=auto python launch/$stage.py --config=$config $*"
