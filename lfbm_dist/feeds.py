"""Training-batch feeds: which images each rank trains on at each step.

A feed returns, for (step, micro-step), this rank's micro-batch as float [−1, 1] on the device,
plus the *global sample indices* of its rows: the keys of all per-sample randomness (flips,
Langevin chains), so a global batch trains identically on any number of ranks.
"""
from __future__ import annotations

import torch

from dataclasses import dataclass

from .config import Config
from .data.masks import make_mask
from .data.memory import MemorySampler, load_memory_dataset, split_indices, to_model_range
from .seeding import per_sample_uniform

_FLIP_STREAM = 1  # seeding stream id for horizontal flips (Langevin noise uses stream 0)


def micro_batch_positions(images_seen: int, micro: int, rank: int, world_size: int, batch_per_gpu: int) -> list[int]:
    """Global sample indices of (micro-step, rank) inside the global batch that starts at images_seen."""
    start = images_seen + (micro * world_size + rank) * batch_per_gpu
    return list(range(start, start + batch_per_gpu))


@dataclass
class Batch:
    x: torch.Tensor                 # (B, C, R, R) float in [−1, 1], on the device
    positions: list[int]            # global sample indices: keys of per-sample randomness
    mask: torch.Tensor | None = None  # (B, 1, R, R) float, 1 = visible (learning from occluded data)
    keys: list[str] | None = None   # dataset sample keys


class MemoryFeed:
    def __init__(self, cfg: Config, rank: int, world_size: int, device: torch.device):
        d, t = cfg.data, cfg.train
        self.images, self.labels = load_memory_dataset(d.dataset, d.resolution, cfg.generator.image_channels,
                                                       d.max_samples, seed=t.seed)
        self.rows = split_indices(self.labels, "train", d.heldout_class, t.seed)  # all rows unless a class is held out
        self.sampler = MemorySampler(len(self.rows), t.seed)
        self.rank, self.world_size, self.device = rank, world_size, device
        self.batch_per_gpu, self.seed, self.hflip = t.batch_per_gpu, t.seed, d.hflip
        self.occlusion, self.mask_seed, self.resolution = d.occlusion, d.mask_seed, d.resolution
        self.corrupt_skipped = 0

    def __len__(self) -> int:
        return len(self.rows)

    def state_dict(self) -> dict:
        return {}  # position is a pure function of images_seen

    def load_state_dict(self, state: dict) -> None:
        pass

    def micro_batch(self, images_seen: int, step: int, micro: int) -> Batch:
        positions = micro_batch_positions(images_seen, micro, self.rank, self.world_size, self.batch_per_gpu)
        rows = torch.tensor([self.rows[self.sampler.index(p)] for p in positions])
        x = to_model_range(self.images[rows])  # (B, C, R, R) in [−1, 1]
        if self.hflip:
            flip = per_sample_uniform(self.seed, step, positions, _FLIP_STREAM) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        mask = None
        if self.occlusion != "none":  # keyed by dataset row: the same image always has the same mask
            mask = torch.stack([make_mask(self.occlusion, self.resolution, str(int(r)), self.mask_seed)
                                for r in rows]).float().to(self.device)
        return Batch(x.to(self.device, non_blocking=True), positions, mask, [str(int(r)) for r in rows])


def build_feed(cfg: Config, rank: int, world_size: int, device: torch.device):
    if cfg.data.source == "memory":
        return MemoryFeed(cfg, rank, world_size, device)
    from .data.shard_feed import ShardFeed  # the streaming loader (WebDataset shards)

    return ShardFeed(cfg, rank, world_size, device)
