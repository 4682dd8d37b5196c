"""lfbm_dist: distributed training of LFBM, a latent-space normalizing-flow prior on a ConvNet
generator learned by maximum likelihood with short-run Langevin posterior inference
(Xie et al., AAAI 2023)."""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# TORCHINDUCTOR_CACHE_DIR as this process received it, read before torch is imported: importing
# torch._dynamo sets it to torch's per-machine default, after which an operator's choice and torch's
# default look alike (training/compile_cache.py). None if torch's compiler was imported first.
COMPILE_CACHE_AT_START: str | None = (
    None if "torch._dynamo" in _sys.modules else _os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
)
