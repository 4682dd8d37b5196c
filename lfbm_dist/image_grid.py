"""Image grids for PNG files and trackers, in torchvision.utils.make_grid's layout (`pad` pixels around
every cell, grey images as RGB). Our own 20 lines instead of torchvision's because importing
torchvision costs ≈ 1.7 s a process (it imports torch._dynamo), which every lfbm-sample, lfbm-export
and lfbm-evaluate paid for a tiling; tests/test_models.py holds both to the same pixels."""

from __future__ import annotations

from pathlib import Path

import torch


def tile(images: torch.Tensor, columns: int = 8, pad: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """(N, C, H, W) in [−1, 1] -> (3 or C, rows·(H+pad)+pad, cols·(W+pad)+pad) in [0, 1], row-major."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)  # value range (−1, 1) -> (0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, c, h, w = x.shape
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    grid = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), float(pad_value))
    for i in range(n):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid


def save_png(images: torch.Tensor, path: str | Path, columns: int = 8, pad_value: float = 0.0) -> None:
    """tile() written as an 8-bit PNG (rounded as torchvision.utils.save_image rounds)."""
    from PIL import Image

    grid = tile(images, columns, pad_value=pad_value)
    pixels = grid.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
