"""Occlusion masks for the paper's tasks (§4.3 supervised inpainting, §4.6 learning from
occluded data). A mask is (1, R, R) uint8 with 1 = visible, 0 = occluded, broadcast over channels.

Specs (sizes are given at 64² as in the paper and scaled to other resolutions):
    none                 everything visible
    center               40×40 centre square (inpainting, §4.3)
    region:20|30|40      one randomly placed square of that size (§4.6 "single region")
    saltpepper:30|50|70  that percentage of pixels occluded independently (§4.6)

Random masks are deterministic per (seed, sample key): the same training image always gets the
same mask, on any rank, worker or epoch.
"""

from __future__ import annotations

import torch

from ..errors import LfbmError
from ..seeding import text_seed

PAPER_RESOLUTION = 64


class MaskSpecError(LfbmError, ValueError):
    pass


def parse_mask_spec(spec: str) -> tuple[str, int]:
    """'region:30' -> ('region', 30). Raises MaskSpecError with a one-line reason."""
    kind, _, arg = spec.partition(":")
    if kind in ("none", "center") and not arg:
        return kind, 40 if kind == "center" else 0
    if kind in ("region", "saltpepper") and arg.isdigit():
        value = int(arg)
        if kind == "region" and 1 <= value <= PAPER_RESOLUTION:
            return kind, value
        if kind == "saltpepper" and 0 < value < 100:
            return kind, value
    raise MaskSpecError(
        f"bad occlusion mask {spec!r}: use none, center, region:SIZE (1..64 px at 64²) or saltpepper:PERCENT (1..99)"
    )


def _scaled(size_at_64: int, resolution: int) -> int:
    return max(1, round(size_at_64 * resolution / PAPER_RESOLUTION))


def make_mask(spec: str, resolution: int, key: str = "", seed: int = 0) -> torch.Tensor:
    kind, value = parse_mask_spec(spec)
    mask = torch.ones(1, resolution, resolution, dtype=torch.uint8)
    if kind == "none":
        return mask
    if kind == "center":
        size = _scaled(value, resolution)
        start = (resolution - size) // 2
        mask[:, start : start + size, start : start + size] = 0
        return mask
    gen = torch.Generator().manual_seed(text_seed("mask", seed, key))
    if kind == "region":
        size = _scaled(value, resolution)
        top, left = torch.randint(0, resolution - size + 1, (2,), generator=gen).tolist()
        mask[:, top : top + size, left : left + size] = 0
        return mask
    occluded = torch.rand(1, resolution, resolution, generator=gen) < value / 100.0
    mask[occluded] = 0
    return mask
