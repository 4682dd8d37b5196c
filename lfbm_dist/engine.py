"""The one place where the model is wrapped for distributed training (Accelerate / DDP).

Everything else sees two names for the model: `plain` (the nn.Module: Langevin inference,
sampling, export) and `wrapped` (DDP / DeepSpeed engine: the learning step only).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any

import torch
from torch import nn

from . import dist
from .config import Config


class LaunchError(RuntimeError):
    """The launcher and the process group disagree (e.g. a silent one-process run)."""


def _expected_world_size() -> int | None:
    """What the launcher asked for, where it says so."""
    for var in ("LFBM_EXPECTED_WORLD_SIZE", "WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


class Engine:
    def __init__(self, cfg: Config):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cuda = torch.cuda.is_available()
        # gloo on CPU (NCCL needs GPUs); the timeout covers long evaluations between collectives.
        init_kwargs = InitProcessGroupKwargs(backend="nccl" if cuda else "gloo",
                                             timeout=datetime.timedelta(minutes=30))
        # Only under a launcher: Accelerate treats an explicit backend as "distributed" even alone.
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(cpu=not cuda, kwargs_handlers=[init_kwargs] if launched else [])
        self.device = self.accelerator.device
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        expected = _expected_world_size()
        if expected is not None and expected != self.world_size:
            raise LaunchError(f"launcher asked for {expected} processes but the process group has "
                              f"{self.world_size}; on CPU use `accelerate launch --multi_gpu --num_processes N` "
                              "(`--cpu` silently runs one process) or torchrun")
        self.autocast_dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, wrapped: Any) -> nn.Module:
        return self.accelerator.unwrap_model(wrapped)

    def no_sync(self, wrapped: Any, skip_sync: bool):
        """Skip DDP's gradient all-reduce on all but the last accumulation micro-step."""
        return self.accelerator.no_sync(wrapped) if skip_sync else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (a collective: call it on every rank, once per logging tick)."""
        if self.world_size == 1:
            return values
        return self.accelerator.reduce(values, reduction="mean")

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def end(self) -> None:
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        if dist.is_initialized():
            torch.distributed.destroy_process_group()
