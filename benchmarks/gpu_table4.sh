#!/usr/bin/env bash
# The decisive Table 4 point at the paper's budget, on one GPU, through the reproduction harness:
# held-out digit 4, flow prior vs Gaussian prior (ABP), the official protocol (configs/mnist28.yaml:
# noise-free 400-step inference, trapezoidal AUPRC), 1,060 kimg, seeds 0 and 1 each. Resumable: a
# rerun skips finished points and continues an interrupted one from its newest checkpoint.
#
#   bash benchmarks/gpu_table4.sh [RUN_ROOT]        # default RUN_ROOT: runs/repro
#
# Then docs/REPRODUCTION.md's Table 4 section takes runs/repro/table4_anomaly/paper/summary.md.
# (mnist28's BatchNorm couples a batch's chains in training, so its training chains keep the
# eager step loop on a GPU too; the 400-step test-time chains run compiled, in eval mode.)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-runs/repro}
GRID=experiments/table4_anomaly.yaml
POINTS=(
    heldout_class-4_prior-flow_seed-0 heldout_class-4_prior-gaussian_seed-0
    heldout_class-4_prior-flow_seed-1 heldout_class-4_prior-gaussian_seed-1
)
args=()
for point in "${POINTS[@]}"; do args+=(--point "$point"); done
python -m lfbm_dist.repro run "$GRID" --scale paper --root "$ROOT" "${args[@]}"
python -m lfbm_dist.repro summary "$GRID" --scale paper --root "$ROOT"
