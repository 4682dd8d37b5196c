#!/usr/bin/env bash
# Build WebDataset shards from real LFW faces shipped in scikit-image (once), then train on them.
# Extra arguments are passed to the trainer as key=value overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -f data/lfw16/index.json ]; then
    $PY -m data_tools.build_shards demo --name lfw --out data/lfw16 --resolution 16 \
        --samples-per-shard 50 --test-fraction 0.1 --no-progress
fi
$PY -m lfbm_dist.train --config configs/quickstart.yaml "$@"
# Evaluate: FID with the real (offline) Inception on a small sample, long-run reconstruction MSE on
# the test split, and an image grid of samples.
$PY -m lfbm_dist.evaluate --run runs/quickstart --metrics fid,recon \
    eval.fid_num_samples=500 eval.fid_batch=100 eval.recon_samples=20
$PY -m lfbm_dist.sample --run runs/quickstart --num 64 --out runs/quickstart/samples
echo "TensorBoard: .venv/bin/tensorboard --logdir runs/quickstart/tensorboard  (scalars: loss/*, recon_mse, eval/fid; images: samples/prior, reconstructions)"
