"""Rank-0 observability: TensorBoard scalars and image grids, a status line per tick, a progress bar."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch


class Observer:
    def __init__(self, run_dir: str, enabled: bool, total_images: int, start_images: int):
        self.enabled = enabled
        self.total_images = total_images
        self.writer = None
        self.tick_time, self.tick_images = time.perf_counter(), start_images
        self.start_time, self.start_images = self.tick_time, start_images
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def images_per_sec(self, images_seen: int) -> float:
        now = time.perf_counter()
        rate = (images_seen - self.tick_images) / max(now - self.tick_time, 1e-9)
        self.tick_time, self.tick_images = now, images_seen
        return rate

    def scalars(self, values: dict[str, float], images_seen: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, global_step=images_seen)

    def image_grid(self, tag: str, images: torch.Tensor, images_seen: int) -> None:
        """images: (N, C, H, W) in [−1, 1]."""
        if self.writer is None:
            return
        import torchvision

        grid = torchvision.utils.make_grid(images.float().clamp(-1, 1).cpu(), nrow=8, normalize=True,
                                           value_range=(-1, 1))
        self.writer.add_image(tag, grid, global_step=images_seen)

    def status(self, step: int, images_seen: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start_time
        done = images_seen - self.start_images
        rate = done / max(elapsed, 1e-9)
        eta = max(self.total_images - images_seen, 0) / max(rate, 1e-9)
        pct = 100.0 * images_seen / max(self.total_images, 1)
        bar = "#" * int(pct // 5) + "." * (20 - int(pct // 5))
        parts = " ".join(f"{k.replace('/', '_')}={v:.4g}" for k, v in values.items())
        print(f"[{bar}] {pct:5.1f}% step {step} kimg {images_seen / 1000:.3f} "
              f"{rate:.1f} img/s eta {eta:.0f}s | {parts}", file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
