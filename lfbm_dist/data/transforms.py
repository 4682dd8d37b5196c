"""Decode and check one image sample: bytes -> uint8 (C, R, R). Flips are keyed per sample."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import SampleError

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "ppm", "bmp")


def square_resize(img: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    """Resize the shorter side to `size`, then centre-crop to size×size (no-op if already so)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    img = img.resize(new, resample=resample)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_image(members: dict[str, bytes], channels: int, resolution: int, on_mismatch: str) -> torch.Tensor:
    """members: {extension: bytes} of one WebDataset sample. Returns (C, R, R) uint8."""
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        raise SampleError(f"no image member (has: {', '.join(sorted(members)) or 'nothing'})")
    try:
        img = Image.open(io.BytesIO(members[ext]))
        img.load()
    except UnidentifiedImageError:
        raise SampleError(f"cannot decode .{ext} (not an image format PIL reads)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"cannot decode .{ext} ({exc})") from None
    want_mode = "RGB" if channels == 3 else "L"
    if img.mode != want_mode:
        if on_mismatch != "convert":
            raise SampleError(f"image mode {img.mode}, expected {want_mode}")
        img = img.convert(want_mode)
    if img.size != (resolution, resolution):
        if on_mismatch != "convert":
            raise SampleError(f"image is {img.size[0]}×{img.size[1]}, expected {resolution}×{resolution}")
        img = square_resize(img, resolution)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (C, R, R)
