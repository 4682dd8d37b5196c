"""Distributed FID.

* Generated samples are indexed 0..N−1 and sample i's latent comes from a generator seeded by
  (seed, i): the sample set does not depend on world size or batch size. Rank r takes i ≡ r (mod W).
* Each rank accumulates float64 feature sums and outer products; these are all-reduced (never
  images). μ and Σ (unbiased, as np.cov) follow; the Fréchet distance is torch-fidelity's own
  `fid_statistics_to_metric`.
* Reference statistics of the training shards are computed once (distributed the same way) and
  cached under a key hashing every setting that changes them; rank 0 writes the cache atomically,
  every rank reads it after rank 0 decides.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..collectives import SINGLE_PROCESS, Collectives
from ..files import write_atomic
from ..progress import NO_PROGRESS, Progress

FEATURE_DIM = 2048
STATS_VERSION = 1  # bump when preprocessing changes: invalidates every cached reference


class FeatureStats:
    """Running float64 Σf and Σffᵀ of (N, 2048) features; all-reduce then μ, Σ."""

    def __init__(self, dim: int = FEATURE_DIM):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, feats: torch.Tensor) -> None:
        f = feats.detach().to("cpu", torch.float64)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self, comm: Collectives = SINGLE_PROCESS) -> None:
        """Sum over ranks (collective; float64 tensors: exact-order-independent to ~1e-16)."""
        if comm.world_size == 1:
            return
        packed = torch.cat([torch.tensor([float(self.n)], dtype=torch.float64), self.sum, self.outer.flatten()])
        packed = comm.all_reduce_sum(packed)
        d = self.sum.numel()
        self.n = int(round(packed[0].item()))
        self.sum, self.outer = packed[1 : 1 + d].clone(), packed[1 + d :].reshape(d, d).clone()

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError("FID needs at least 2 images")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.numpy(), sigma.numpy()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """torch-fidelity's own Fréchet distance on our statistics."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    out = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
    return float(out["frechet_inception_distance"])


def to_uint8(images_pm1: torch.Tensor) -> torch.Tensor:
    """[−1, 1] float -> uint8, as a saved PNG would hold it (generated and real images alike)."""
    return ((images_pm1.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def generated_stats(
    sample_fn: Callable[[list[int]], torch.Tensor],
    inception,
    num_samples: int,
    batch: int,
    device: torch.device,
    comm: Collectives = SINGLE_PROCESS,
    progress: Progress = NO_PROGRESS,
) -> FeatureStats:
    """sample_fn(indices) -> images in [−1, 1] for exactly those global sample indices."""
    stats = FeatureStats()
    mine = list(range(comm.rank, num_samples, comm.world_size))
    for start in range(0, len(mine), batch):
        indices = mine[start : start + batch]
        images = sample_fn(indices)
        stats.update(inception(to_uint8(images)))
        progress.update(len(indices) * comm.world_size)
    stats.all_reduce(comm)
    return stats


def image_stats(
    batches: Iterable[torch.Tensor], inception, comm: Collectives = SINGLE_PROCESS, progress: Progress = NO_PROGRESS
) -> FeatureStats:
    """Statistics of uint8 image batches already split by rank (e.g. reference shards)."""
    stats = FeatureStats()
    for images in batches:
        stats.update(inception(images))
        progress.update(len(images) * comm.world_size)
    stats.all_reduce(comm)
    return stats


def cache_key(settings: dict) -> str:
    blob = json.dumps({"version": STATS_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"fid-ref-{key}.npz"


def load_cached(cache_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray, int] | None:
    path = _cache_path(cache_dir, key)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:  # no pickles from the cache either
        return data["mu"], data["sigma"], int(data["n"])


def save_cached(cache_dir: Path, key: str, mu, sigma, n: int, settings: dict) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _cache_path(cache_dir, key)
    tmp = cache_dir / f".fid-ref-{key}.{os.getpid()}.npz"
    np.savez(tmp, mu=mu, sigma=sigma, n=np.array(n))
    os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    write_atomic(cache_dir / f"fid-ref-{key}.json", json.dumps(settings, indent=2, sort_keys=True))
    return path


def is_cached(settings: dict, cache_dir: Path) -> bool:
    """Whether reference_stats will read these statistics instead of computing them."""
    return _cache_path(cache_dir, cache_key(settings)).is_file()


def reference_stats(
    settings: dict, cache_dir: Path, compute: Callable[[], FeatureStats], comm: Collectives = SINGLE_PROCESS
):
    """(μ, Σ, n, 'hit'|'miss'): rank 0 decides, computes if needed (all ranks help), writes; all read."""
    key = cache_key(settings)
    hit = bool(comm.broadcast_object(_cache_path(cache_dir, key).is_file() if comm.is_main else False))
    if not hit:
        stats = compute()  # collective
        if comm.is_main:
            mu, sigma = stats.mu_sigma()
            save_cached(cache_dir, key, mu, sigma, stats.n, settings)
    comm.barrier()
    mu, sigma, n = load_cached(cache_dir, key)
    return mu, sigma, n, "hit" if hit else "miss"


def check_comparable(a: dict, b: dict) -> None:
    """Refuse to compare FIDs from different networks, resolutions or sample counts."""
    for key in ("fid_network", "fid_image_resolution", "fid_num_samples"):
        if a.get(key) != b.get(key):
            raise ValueError(f"FID numbers are not comparable: {key} {a.get(key)!r} vs {b.get(key)!r}")
