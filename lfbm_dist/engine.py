"""The one place where the model is wrapped for distributed training (Accelerate / DDP).

Everything else sees two names for the model: `plain` (the nn.Module: Langevin inference,
sampling, export) and `wrapped` (DDP / DeepSpeed engine: the learning step only).
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
from torch import nn

from . import dist
from .config import Config
from .fastpath import FastPath


class LaunchError(RuntimeError):
    """The launcher and the process group disagree (e.g. a silent one-process run)."""


def _requested_processes_from_launcher() -> int | None:
    """`accelerate launch --cpu --num_processes N` starts ONE process and says nothing: the only
    trace of N is the launcher's own command line (our parent process)."""
    try:
        import psutil

        argv = psutil.Process(os.getppid()).cmdline()
    except Exception:  # no psutil, or no permission: nothing to check against
        return None
    if not any("accelerate" in a for a in argv[:3]):
        return None
    for i, arg in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(argv) and argv[i + 1].isdigit():
                return int(argv[i + 1])
            if arg.startswith(flag + "=") and arg.split("=", 1)[1].isdigit():
                return int(arg.split("=", 1)[1])
    return None


def _expected_world_size() -> int | None:
    """What the launcher asked for, where it says so."""
    for var in ("LFBM_EXPECTED_WORLD_SIZE", "WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    if "ACCELERATE_USE_CPU" in os.environ:
        return _requested_processes_from_launcher()
    return None


def _deepspeed_plugin(cfg: Config):
    """DeepSpeed settings from our config (micro-batch, accumulation, clipping) + the launcher's stage.

    DeepSpeed's own bf16/fp16 modes are left OFF on purpose: they cast the whole module, prior and
    its log-determinants included. Mixed precision here is autocast around generator passes only.
    """
    import json

    from accelerate.utils import DeepSpeedPlugin

    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    ds_config = json.loads(open(config_file).read()) if config_file and config_file != "none" else {}
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", ds_config.get("zero_optimization", {}).get("stage", 2)))
    ds_config.setdefault("zero_optimization", {})["stage"] = stage
    ds_config = {k: v for k, v in ds_config.items() if v != "auto"}  # ours fill these below
    ds_config.update({
        "train_micro_batch_size_per_gpu": cfg.train.batch_per_gpu,
        "gradient_accumulation_steps": cfg.train.accumulation_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16": {"enabled": False}, "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,  # our torch Adam with two parameter groups
        "steps_per_print": 2**31 - 1,
    })
    ds_config.pop("train_batch_size", None)  # derived: micro × accumulation × world
    return DeepSpeedPlugin(hf_ds_config=ds_config)


class Engine:
    def __init__(self, cfg: Config):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cuda = torch.cuda.is_available()
        # gloo on CPU (NCCL needs GPUs); the timeout covers long evaluations between collectives.
        init_kwargs = InitProcessGroupKwargs(backend="nccl" if cuda else "gloo",
                                             timeout=datetime.timedelta(minutes=cfg.train.collective_timeout_min))
        # Only under a launcher: Accelerate treats an explicit backend as "distributed" even alone.
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.uses_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        extra = {"deepspeed_plugin": _deepspeed_plugin(cfg)} if self.uses_deepspeed else {}
        # cpu=True would silently turn DeepSpeed off; DeepSpeed finds its CPU accelerator itself.
        self.accelerator = Accelerator(cpu=not cuda and not self.uses_deepspeed, kwargs_handlers=[init_kwargs] if launched else [],
                                       gradient_accumulation_steps=cfg.train.accumulation_steps, **extra)
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
        # channels-last, cuDNN autotuning, compile (channels-last never under DeepSpeed: it crashes there)
        self.fast = FastPath.resolve(cfg.perf, self.device, deepspeed=self.uses_deepspeed)
        self.backend_name = str(self.accelerator.distributed_type).split(".")[-1]
        if self.uses_deepspeed:
            self.backend_name += f" ZeRO-{self.accelerator.state.deepspeed_plugin.zero_stage}"

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """Fast-path layout first (DDP registers its buckets on the parameters as they are then);
        DDP's bucketed all-reduce overlaps the learning step's backward (DeepSpeed: overlap_comm)."""
        self.fast.apply(model)
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, wrapped: Any) -> nn.Module:
        return self.accelerator.unwrap_model(wrapped)

    def accumulate(self, wrapped: Any):
        """One micro-step: DDP skips its all-reduce until the last one; DeepSpeed counts micro-steps.
        Loss scaling by 1/accumulation_steps happens inside `backward` (Accelerate or DeepSpeed)."""
        return self.accelerator.accumulate(wrapped)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def all_ranks_true(self, flag: bool) -> bool:
        """Logical AND over ranks (one tiny collective)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() == self.world_size)

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
