"""World-size-independent randomness: every random number a training sample uses is drawn
from a generator seeded by (run seed, optimizer step, global sample index), so the same global
batch produces the same Langevin chains whether it is split over 1 or 8 ranks or over several
accumulation steps. Every stream of randomness is named here, in one place.
"""

from __future__ import annotations

import enum
import hashlib

import torch


class Stream(enum.IntEnum):
    """Training-time streams, keyed by (seed, step, global sample index, stream)."""

    LANGEVIN = 0  # posterior chain start + per-step noise (or the VAE's reparameterisation ε)
    FLIP = 1  # horizontal flips of in-memory images
    PRIOR_CHAIN = 2  # the EBM prior's short-run chains in the learning step (LEBM baseline)


class Tag(str, enum.Enum):
    """Evaluation and logging streams, keyed by (tag, eval seed, sample index): text tags."""

    SAMPLE = "sample"  # prior samples for FID and sample grids (z0, or the EBM chain)
    RECON = "recon"  # long-run reconstruction chains
    ANOMALY = "anomaly"  # anomaly-detection inference
    AGGPOST = "aggpost"  # aggregated-posterior diagnostic
    INPAINT = "inpaint"  # + completion number
    TB_RECON = "tb-recon"  # TensorBoard reconstruction grid
    # data: shard order "shards" (seed, epoch), stream buffers "buffer" (seed, epoch, stream, pass),
    # flips "flip" (seed, epoch, key) and occlusion masks "mask" (mask seed, key) in data/.

    def __str__(self) -> str:
        return self.value


def sample_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (stable across runs, platforms and Python versions)."""
    digest = hashlib.blake2b(",".join(str(int(k)) for k in keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def text_seed(*parts: object) -> int:
    """A 63-bit seed from arbitrary parts (e.g. a run seed and a sample key string)."""
    digest = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def normal_rows(row_seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) standard normals, row i drawn from a CPU generator seeded with row_seeds[i].

    On the CPU, so bitwise identical on every machine; the caller moves it. For a 256² step this
    is ≈ 2 MB per batch, negligible next to the K generator passes.
    """
    out = torch.empty((len(row_seeds), *shape))
    gen = torch.Generator()
    for row, row_seed in enumerate(row_seeds):
        gen.manual_seed(row_seed)
        out[row] = torch.randn(shape, generator=gen)
    return out


def per_sample_normal(
    seed: int, step: int, sample_indices: list[int], shape: tuple[int, ...], stream: int = 0
) -> torch.Tensor:
    """(B, *shape) standard normals; row i depends only on (seed, step, sample_indices[i], stream)."""
    return normal_rows([sample_seed(seed, step, index, stream) for index in sample_indices], shape)


def per_sample_uniform(seed: int, step: int, sample_indices: list[int], stream: int) -> torch.Tensor:
    """(B,) uniforms in [0, 1) with the same keying (used for augmentation decisions)."""
    gen = torch.Generator()
    values = []
    for index in sample_indices:
        gen.manual_seed(sample_seed(seed, step, index, stream))
        values.append(torch.rand((), generator=gen))
    return torch.stack(values) if values else torch.empty(0)
