"""Logging for every command: what a user should read, and nothing else, on the console; everything
(full tracebacks included) in RUN_DIR/logs/rank{R}.log.

* Informational lines go to stdout from rank 0 only; warnings and errors go to stderr from every
  rank (prefixed with the rank when there are several).
* Third-party noise is stopped where it starts: DeepSpeed is told its accelerator on CPU (its only
  line without DeepSpeed in use), and the libraries' INFO chatter is kept out of the console (it
  still reaches the log file). Their warnings and errors are never hidden.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOGGER = "lfbm_dist"
_NOISY = (
    "accelerate",
    "DeepSpeed",
    "deepspeed",
    "torch.distributed",
    "torch._dynamo",
    "torch._inductor",
    "fsspec",
    "urllib3",
    "PIL",
    "matplotlib",
    "h5py",
)


class _NotOurs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(LOGGER)


class _MaxLevel(logging.Filter):
    def __init__(self, below: int):
        super().__init__()
        self.below = below

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.below


def cpu_deepspeed_without_cuda() -> None:
    """Call before DeepSpeed is imported (the engine does, through Accelerate): without CUDA, DeepSpeed
    prints "Setting accelerator to CPU" at import unless told. Not in setup(): it imports torch, which
    commands that never train (lfbm-repro, lfbm-slurm) would pay ≈ 2 s for."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


def quiet_third_party() -> None:
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


_root_handlers: list[logging.Handler] = []


def setup(
    rank: int = 0, world_size: int = 1, run_dir: str | Path | None = None, verbose: bool = False
) -> logging.Logger:
    """(Re)configure the lfbm_dist logger for this process; safe to call again once the rank is known."""
    quiet_third_party()
    logging.raiseExceptions = False  # a log write that fails (disk full) must not print its own traceback
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.DEBUG)
    root = logging.getLogger()
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    for handler in _root_handlers:
        root.removeHandler(handler)
    _root_handlers.clear()
    prefix = f"[rank {rank}] " if world_size > 1 else ""
    info = logging.StreamHandler(sys.stdout)
    info.setLevel(logging.DEBUG if verbose else logging.INFO)
    info.addFilter(_MaxLevel(logging.WARNING))
    info.setFormatter(logging.Formatter("%(message)s"))
    if rank == 0:
        log.addHandler(info)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    problems.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    log.addHandler(problems)
    if run_dir is not None:
        folder = Path(run_dir) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        # On the root logger: our records (they propagate) and third-party ones alike.
        file = logging.FileHandler(folder / f"rank{rank}.log")
        file.setLevel(logging.DEBUG)
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        # Third-party warnings stay on the console (they are never hidden); ours have their handlers above.
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.addFilter(_NotOurs())
        console.setFormatter(logging.Formatter(f"{prefix}%(name)s: %(message)s"))
        for handler in (file, console):
            root.addHandler(handler)
            _root_handlers.append(handler)
    return log
