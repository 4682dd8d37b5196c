"""The trainer's view of the shard loader: the next micro-batch, and a resumable position."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import Config
from .shards import DataError, ShardInfo, ShardStream, count_samples, expand_shard_specs


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    return None if "://" in url or url.startswith("pipe:") else Path(url)


def resolve_shards(cfg: Config) -> list[ShardInfo]:
    """Expand specs, fail early on missing local shards, count samples where no index says."""
    shards = expand_shard_specs(cfg.data.shards, cfg.data.allow_pipe)
    for shard in shards:
        path = _local_path(shard.url)
        if path is not None and not path.is_file():
            raise DataError(f"shard not found: {shard.url}")
    if any(s.samples is None for s in shards):
        print(f"data: counting samples in {len(shards)} shards (an index.json from data_tools avoids this)",
              file=sys.stderr, flush=True)
        shards = [ShardInfo(s.url, count_samples(s.url, cfg.data.allow_pipe)) for s in shards]
    return shards


class ShardFeed:
    def __init__(self, cfg: Config, rank: int, world_size: int, device: torch.device):
        self.cfg, self.rank, self.world_size, self.device = cfg, rank, world_size, device
        self.shards = resolve_shards(cfg)
        self.num_workers = cfg.data.num_workers
        self.epoch, self.batches_done = 0, 0
        self.positions = self._fresh_positions()
        self._iter = None
        self._remaining = 0
        self.corrupt_total = 0  # unusable samples skipped by this rank's workers, whole run
        self._corrupt_seen = [0] * max(1, self.num_workers)

    def _fresh_positions(self) -> list[list[int]]:
        return [[0, 0, 0] for _ in range(max(1, self.num_workers))]

    def __len__(self) -> int:
        return sum(int(s.samples) for s in self.shards)

    # -- position ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "positions": [list(p) for p in self.positions],
                "world_size": self.world_size, "num_workers": self.num_workers}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.epoch = int(state["epoch"])
        if state.get("world_size") == self.world_size and state.get("num_workers") == self.num_workers:
            self.batches_done = int(state["batches_done"])
            self.positions = [[int(v) for v in p] for p in state["positions"]]
        else:  # another split of the stream: the plan differs, so restart this epoch
            print(f"data: world size / workers changed since the checkpoint; epoch {self.epoch} restarts",
                  file=sys.stderr, flush=True)
            self.batches_done, self.positions = 0, self._fresh_positions()
        self._iter = None

    # -- batches -------------------------------------------------------------------------------
    @property
    def corrupt_skipped(self) -> int:
        return self.corrupt_total

    def _start_epoch(self) -> None:
        self._corrupt_seen = [p[2] for p in self.positions]
        d, t = self.cfg.data, self.cfg.train
        stream = ShardStream(
            self.shards, rank=self.rank, world_size=self.world_size, num_workers=self.num_workers,
            batch=t.batch_per_gpu, epoch=self.epoch, seed=t.seed, resolution=d.resolution,
            channels=self.cfg.generator.image_channels, hflip=d.hflip, shuffle_buffer=d.shuffle_buffer,
            on_mismatch=d.on_mismatch, max_corrupt=d.max_corrupt_samples, occlusion=d.occlusion,
            mask_seed=d.mask_seed, allow_pipe=d.allow_pipe, resume=[list(p) for p in self.positions],
            batches_done=self.batches_done)
        self._remaining = stream.batches_per_rank - self.batches_done
        loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            prefetch_factor=4 if self.num_workers else None)
        self._iter = iter(loader)

    def next_batch(self) -> dict:
        if self._iter is None:
            self._start_epoch()
        if self._remaining <= 0:
            self.epoch, self.batches_done = self.epoch + 1, 0
            self.positions = self._fresh_positions()
            self._start_epoch()
        batch = next(self._iter)
        self._remaining -= 1
        self.batches_done += 1
        self.positions[batch["worker"]] = list(batch["position"])
        self.corrupt_total += batch["corrupt"] - self._corrupt_seen[batch["worker"]]
        self._corrupt_seen[batch["worker"]] = batch["corrupt"]
        return batch

    def micro_batch(self, images_seen: int, step: int, micro: int):
        from ..feeds import Batch, micro_batch_positions

        b = self.next_batch()
        x = b["images"].to(self.device, non_blocking=True).float() / 127.5 - 1.0  # (B, C, R, R) in [−1, 1]
        mask = b["masks"].to(self.device, non_blocking=True).float() if "masks" in b else None
        positions = micro_batch_positions(images_seen, micro, self.rank, self.world_size, self.cfg.train.batch_per_gpu)
        return Batch(x, positions, mask, b["keys"])
