"""Training-batch feeds: which images each rank trains on at each step.

A feed returns, for (step, micro-step), this rank's micro-batch as float [−1, 1] on the device,
plus the *global sample indices* of its rows: the keys of all per-sample randomness (flips,
Langevin chains), so a global batch trains identically on any number of ranks.
"""
from __future__ import annotations

import torch

from .config import Config
from .data.memory import MemorySampler, load_memory_dataset, to_model_range
from .seeding import per_sample_uniform

_FLIP_STREAM = 1  # seeding stream id for horizontal flips (Langevin noise uses stream 0)


class MemoryFeed:
    def __init__(self, cfg: Config, rank: int, world_size: int, device: torch.device):
        d, t = cfg.data, cfg.train
        self.images, self.labels = load_memory_dataset(d.dataset, d.resolution, cfg.generator.image_channels,
                                                       d.max_samples, seed=t.seed)
        self.sampler = MemorySampler(len(self.images), t.seed)
        self.rank, self.world_size, self.device = rank, world_size, device
        self.batch_per_gpu, self.seed, self.hflip = t.batch_per_gpu, t.seed, d.hflip

    def __len__(self) -> int:
        return len(self.images)

    def state_dict(self) -> dict:
        return {}  # position is a pure function of images_seen

    def load_state_dict(self, state: dict) -> None:
        pass

    def micro_batch(self, images_seen: int, step: int, micro: int) -> tuple[torch.Tensor, list[int]]:
        start = images_seen + (micro * self.world_size + self.rank) * self.batch_per_gpu
        positions = list(range(start, start + self.batch_per_gpu))
        rows = torch.tensor([self.sampler.index(p) for p in positions])
        x = to_model_range(self.images[rows])  # (B, C, R, R) in [−1, 1]
        if self.hflip:
            flip = per_sample_uniform(self.seed, step, positions, _FLIP_STREAM) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.to(self.device, non_blocking=True), positions


def build_feed(cfg: Config, rank: int, world_size: int, device: torch.device):
    if cfg.data.source == "memory":
        return MemoryFeed(cfg, rank, world_size, device)
    from .data.shards import ShardFeed  # the streaming loader (WebDataset)

    return ShardFeed(cfg, rank, world_size, device)
