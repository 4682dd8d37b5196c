"""Rank-0 observability: scalars and image grids to the run's trackers (train.log_with: TensorBoard by
default; the engine makes them), a progress bar with ETA on a terminal and a status line every logging
tick."""

from __future__ import annotations

import time
from typing import Protocol

import torch

from ..progress import Progress


class Tracking(Protocol):  # engine.Trackers: rank 0's trackers (empty elsewhere)
    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def image(self, tag: str, grid: torch.Tensor, step: int) -> None: ...


class Observer:
    def __init__(self, trackers: Tracking, enabled: bool, total_images: int, start_images: int):
        self.enabled = enabled
        self.total_images = total_images
        self.trackers = trackers
        self.tick_time, self.tick_images = time.perf_counter(), start_images
        self.progress = Progress(
            total_images, "training", unit="img", enabled=enabled, initial=start_images, interval_s=float("inf")
        )  # in logs the status lines below are the progress

    def images_per_sec(self, images_seen: int) -> float:
        now = time.perf_counter()
        rate = (images_seen - self.tick_images) / max(now - self.tick_time, 1e-9)
        self.tick_time, self.tick_images = now, images_seen
        return rate

    def advance(self, images: int) -> None:
        self.progress.update(images)

    def scalars(self, values: dict[str, float], images_seen: int) -> None:
        if self.enabled:
            self.trackers.scalars(values, images_seen)

    def image_grid(self, tag: str, images: torch.Tensor, images_seen: int) -> None:
        """images: (N, C, H, W) in [−1, 1]."""
        if not self.enabled:
            return
        from ..image_grid import tile

        self.trackers.image(tag, tile(images), images_seen)

    def status(self, step: int, images_seen: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        shown = ("loss/generator", "loss/prior", "recon_mse", "log_p_z", "images_per_sec", "skipped_steps")
        parts = " ".join(f"{k.split('/')[-1]}={values[k]:.4g}" for k in shown if k in values)
        meter = self.progress.text().replace("training: ", "")
        self.progress.write(f"step {step} kimg {images_seen / 1000:.3f} | {parts} | {meter}")

    def close(self) -> None:
        self.progress.close()  # the trackers are the engine's: it finishes them (Engine.end)
