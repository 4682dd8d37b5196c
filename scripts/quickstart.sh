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
