#!/usr/bin/env bash
# Wheels of what lfbm_dist needs and the lent GPU machines lack (they have torch 2.11, accelerate,
# pytest, pyyaml, safetensors, tensorboard, pillow, scikit-learn, ... but no pydantic or webdataset,
# and no network), for their Python 3.12 on x86-64, into ./.whl (ignored by git; ≈ 3 MB).
# On the GPU machine, before anything else:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#       && export PYTHONPATH=/tmp/site:$PWD
# then e.g. `python3 benchmarks/gpu_proof.py --out proof/` (docs/PERFORMANCE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
PINS=(pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
      typing-extensions==4.16.0 webdataset==1.0.2 braceexpand==0.1.7)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${PINS[@]}"
ls .whl
