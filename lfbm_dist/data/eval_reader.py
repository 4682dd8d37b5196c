"""Deterministic, complete reads for evaluation: every sample of a split exactly once, in shard
order, global index i going to rank i mod W (no shuffle, no flip, no drop). Checked against the
index's checksums like training data; a bad sample stops evaluation with its shard and key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .errors import DataError, SampleError
from .index import ShardInfo, expand_shard_specs, split_specs
from .memory import load_memory_dataset, split_indices
from .reader import iter_samples, verify
from .transforms import decode_image
from .urls import IOOptions


@dataclass
class EvalBatch:
    images: torch.Tensor  # (B, C, R, R) uint8
    indices: list[int]  # global indices within the split (keys of index-seeded randomness)
    labels: torch.Tensor  # (B,) class labels (−1 where unknown)
    keys: list[str]  # dataset keys: the row (packaged sets) or sample key (shards), as training uses


@dataclass(frozen=True)
class EvalData:
    """Where evaluation images come from (plain values; training/build.py makes it from a Config)."""

    resolution: int
    channels: int
    memory: str | None = None  # a packaged set name, or None for shards
    shard_specs: tuple[str, ...] = ()
    max_samples: int = 0  # memory: keep the first N
    heldout_class: int = -1
    seed: int = 0  # memory: the seeded train/test split
    io: IOOptions = IOOptions()
    verify: bool = True


def split_shards(data: EvalData, split: str) -> tuple[list[ShardInfo], str]:
    """Shards of `split` (index files), falling back to the training split when absent."""
    try:
        return expand_shard_specs(split_specs(list(data.shard_specs), split), data.io), split
    except DataError as exc:
        if "has no split" not in str(exc) or split == "train":
            raise
        return expand_shard_specs(split_specs(list(data.shard_specs), "train"), data.io), "train"


def identity(data: EvalData, split: str) -> dict:
    """What identifies the images of a split (for cache keys)."""
    if data.memory is not None:
        return {
            "memory": data.memory,
            "max_samples": data.max_samples,
            "split": split,
            "heldout_class": data.heldout_class,
        }
    shards, used = split_shards(data, split)
    digest = hashlib.sha256(json.dumps([(s.url, s.samples) for s in shards]).encode()).hexdigest()[:16]
    return {"shards": digest, "split": used}


def count(data: EvalData, split: str, max_samples: int) -> int:
    """How many images iter_uint8 yields over all ranks (for progress bars)."""
    if data.memory is not None:
        _, labels = load_memory_dataset(data.memory, data.resolution, data.channels, data.max_samples, seed=data.seed)
        n = len(split_indices(labels, split, data.heldout_class, data.seed))
    else:
        n = sum(int(s.samples or 0) for s in split_shards(data, split)[0])
    return min(n, max_samples) if max_samples else n


def iter_uint8(data: EvalData, split: str, max_samples: int, rank: int, world: int, batch: int) -> Iterator[EvalBatch]:
    """This rank's share of a split, in batches."""
    if data.memory is not None:
        images, labels = load_memory_dataset(
            data.memory, data.resolution, data.channels, data.max_samples, seed=data.seed
        )
        rows = split_indices(labels, split, data.heldout_class, data.seed)
        if max_samples:
            rows = rows[:max_samples]
        mine = [(i, r) for i, r in enumerate(rows) if i % world == rank]
        for start in range(0, len(mine), batch):
            chunk = mine[start : start + batch]
            idx = torch.tensor([r for _, r in chunk])
            yield EvalBatch(images[idx], [i for i, _ in chunk], labels[idx], [str(r) for _, r in chunk])
        return
    shards, _ = split_shards(data, split)
    buf: list = []
    i = 0
    for shard in shards:
        for sample in iter_samples(shard.url, data.io):
            if max_samples and i >= max_samples:
                break
            if i % world == rank:
                try:
                    if data.verify and shard.checksums is not None:
                        verify(sample, shard.checksums)
                    img = decode_image(sample.members, data.channels, data.resolution, "convert")
                except SampleError as exc:
                    raise DataError(f"shard {shard.url} key {sample.key}: {exc}") from None
                buf.append((img, i, int(sample.members.get("cls", b"-1")), sample.key))
                if len(buf) == batch:
                    yield _batch(buf)
                    buf = []
            i += 1
    if buf:
        yield _batch(buf)


def _batch(rows: list) -> EvalBatch:
    images, idx, labels, keys = zip(*rows)
    return EvalBatch(torch.stack(images), list(idx), torch.tensor(labels), list(keys))
