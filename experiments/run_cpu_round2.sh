#!/usr/bin/env bash
# The second round of CPU-scale runs behind docs/REPRODUCTION.md (Tables 3, 5–6, Figure 3), in two
# lanes that together fill a 2-core machine for ≈ 1.5–2 h (one thread each):
#   bash experiments/run_cpu_round2.sh tables    # Tables 5–6 (12 points), then Table 3 (4 points)
#   bash experiments/run_cpu_round2.sh figure3   # Figure 3 (b), (c), then (a) (34 points)
#   bash experiments/run_cpu_round2.sh precision # bf16 vs fp32 on Table 2's metrics (4 points)
# Every command skips finished points, so a lane can be stopped and started again at any time. A
# 10-kimg point takes ≈ 3 min to train and 1–2.5 min to evaluate on one AMD EPYC thread.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/repro}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # as round one: the thread count changes the numbers
REPRO=(.venv/bin/python -m lfbm_dist.repro)
case "${1:-}" in
tables)
    "${REPRO[@]}" run experiments/table5_6_occluded.yaml --scale cpu --root "$ROOT"
    "${REPRO[@]}" run experiments/table3_inpainting.yaml --scale cpu --root "$ROOT"
    ;;
figure3)
    for panel in cpu_b cpu_c cpu_a; do
        "${REPRO[@]}" run experiments/fig3_sweeps.yaml --scale "$panel" --root "$ROOT"
    done
    ;;
precision)
    "${REPRO[@]}" run experiments/precision_bf16.yaml --scale cpu --root "$ROOT"
    ;;
*)
    echo "usage: $0 tables|figure3|precision" >&2
    exit 2
    ;;
esac
