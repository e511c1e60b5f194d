#!/bin/bash
# GLIP training on a Cloud TPU VM pod: create it, ship this repository (git archive of HEAD, or --git_url),
# install, run glipjax.train on every worker at once (jax.distributed finds the workers itself), delete it.
#
#   launch/tpu_pod.sh --name glip --zone us-central2-b --accelerator_type v4-32 [--spot] [--keep] [--dry_run] \
#       -- --config configs/glip_t.py:c --workdir /mnt/shared/runs/glip_t
#
# The workdir must be shared by all workers (e.g. a gcsfuse or Filestore mount). --dry_run prints the commands.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m launch.commands tpu-pod "$@"
