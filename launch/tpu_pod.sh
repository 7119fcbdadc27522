#!/usr/bin/env bash
# Run one stage (default: the whole pipeline) on every worker of a TPU VM pod slice.
# JAX's multi-controller runtime finds the other workers itself (jax.distributed.initialize()
# auto-detects TPU pods; see cwpo_jax.sharding.maybe_initialize_distributed).
#
#   launch/tpu_pod.sh TPU_NAME ZONE REPO_DIR_ON_WORKERS CONFIG [--config.x=y ...]
# e.g.
#   launch/tpu_pod.sh my-v5e-256 us-west4-a ~/cwpo_jax configs/paper.py:hh_rlhf,qwen \
#       --config.output_dir=/mnt/shared/run1
# The run folder must be on a filesystem every worker mounts at the same path (Filestore/NFS,
# Lustre): token stores are memory-mapped and checkpoints written in place, so gs:// URLs are
# refused. STAGE=align (any script in launch/) runs one stage instead of the pipeline. Plan the
# run first: python launch/plan.py --config=CONFIG --target=v5e-256.
set -euo pipefail
tpu=$1 zone=$2 repo=$3 config=$4
shift 4
stage=${STAGE:-pipeline}
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd $repo &&
  pip install -q -r requirements-tpu.txt &&
  CWPO_DISTRIBUTED=auto python launch/$stage.py --config=$config $*"
