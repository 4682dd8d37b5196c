#!/usr/bin/env bash
# The CPU-scale runs behind docs/REPRODUCTION.md, in priority order (each command skips finished
# points, so this script can be stopped and started again at any time):
#   1. Table 4, flow vs Gaussian, both seeds      2. Table 2, flow vs Gaussian, both seeds
#   3. Table 2, EBM and LFBM-VAE                  4. Table 4, EBM
# ≈ 6 h on 2 idle cores. Usage: bash experiments/run_cpu_tables.sh [RUN_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-runs/repro}
REPRO=(.venv/bin/python -m lfbm_dist.repro)
"${REPRO[@]}" run experiments/table4_anomaly.yaml --scale cpu --root "$ROOT" --where prior=flow,gaussian
"${REPRO[@]}" run experiments/table2_generation.yaml --scale cpu --root "$ROOT" --where model=flow,gaussian
"${REPRO[@]}" run experiments/table2_generation.yaml --scale cpu --root "$ROOT" --where model=ebm,vae
"${REPRO[@]}" run experiments/table4_anomaly.yaml --scale cpu --root "$ROOT" --where prior=ebm
for grid in table4_anomaly table2_generation; do
    "${REPRO[@]}" summary "experiments/$grid.yaml" --scale cpu --root "$ROOT" > /dev/null
done
