#!/usr/bin/env bash
# Create ./.venv with the pinned, tested stack (constraints.txt) and install lfbm_dist into it.
# Idempotent: a second run with unchanged pins only checks a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.lfbm_setup_stamp
WANT=$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Ignore machine-local pip settings: a local folder there holds a CPU-only torch wheel on which
# PyPI's torchvision fails to load ("operator torchvision::nms does not exist").
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL
export DS_BUILD_OPS=0   # DeepSpeed: no ahead-of-time CUDA op builds; CPU ops JIT-compile on first use
.venv/bin/pip install -q -c constraints.txt torch torchvision
.venv/bin/pip install -q -c constraints.txt -e '.[test]'
echo "$WANT" > "$STAMP"
