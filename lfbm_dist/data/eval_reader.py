"""Deterministic, complete reads for evaluation: every sample of a split exactly once, in shard
order, global index i going to rank i mod W (no shuffle, no flip, no drop)."""
from __future__ import annotations

import hashlib
import json
from typing import Iterator

import torch

from ..config import Config
from .memory import load_memory_dataset
from .shards import DataError, expand_shard_specs, iter_tar_samples
from .transforms import SampleError, decode_image


def _split_specs(cfg: Config, split: str) -> list[str]:
    specs = []
    for spec in cfg.data.shards:
        base = spec.split("#")[0]
        specs.append(f"{base}#{split}" if base.endswith(".json") else spec)
    return specs


def split_shards(cfg: Config, split: str):
    """Shards of `split` (index files), falling back to the training split when absent."""
    try:
        return expand_shard_specs(_split_specs(cfg, split), cfg.data.allow_pipe), split
    except DataError as exc:
        if "has no split" not in str(exc) or split == "train":
            raise
        return expand_shard_specs(_split_specs(cfg, "train"), cfg.data.allow_pipe), "train"


def identity(cfg: Config, split: str) -> dict:
    """What identifies the images of a split (for cache keys)."""
    if cfg.data.source == "memory":
        return {"memory": cfg.data.dataset, "max_samples": cfg.data.max_samples, "split": split,
                "heldout_class": cfg.data.heldout_class}
    shards, used = split_shards(cfg, split)
    digest = hashlib.sha256(json.dumps([(s.url, s.samples) for s in shards]).encode()).hexdigest()[:16]
    return {"shards": digest, "split": used}


def iter_uint8(cfg: Config, split: str, max_samples: int, rank: int, world: int,
               batch: int) -> Iterator[tuple[torch.Tensor, list[int], torch.Tensor]]:
    """(uint8 images (B, C, R, R), global indices, labels) for this rank."""
    d = cfg.data
    channels = cfg.generator.image_channels
    if d.source == "memory":
        from .memory import split_indices

        images, labels = load_memory_dataset(d.dataset, d.resolution, channels, d.max_samples, seed=cfg.train.seed)
        rows = split_indices(labels, split, d.heldout_class, cfg.train.seed)
        if max_samples:
            rows = rows[:max_samples]
        mine = [(i, r) for i, r in enumerate(rows) if i % world == rank]
        for start in range(0, len(mine), batch):
            chunk = mine[start:start + batch]
            idx = torch.tensor([r for _, r in chunk])
            yield images[idx], [i for i, _ in chunk], labels[idx]
        return
    shards, _ = split_shards(cfg, split)
    buf, idx, labels, i = [], [], [], 0
    for shard in shards:
        for key, members in iter_tar_samples(shard.url, d.allow_pipe):
            if max_samples and i >= max_samples:
                break
            if i % world == rank:
                try:
                    buf.append(decode_image(members, channels, d.resolution, "convert"))
                except SampleError as exc:
                    raise DataError(f"shard {shard.url} key {key}: {exc}") from None
                idx.append(i)
                labels.append(int(members.get("cls", b"-1")))
                if len(buf) == batch:
                    yield torch.stack(buf), idx, torch.tensor(labels)
                    buf, idx, labels = [], [], []
            i += 1
    if buf:
        yield torch.stack(buf), idx, torch.tensor(labels)
