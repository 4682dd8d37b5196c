"""Rank / world helpers that also work with no process group (every module runs on a laptop)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as torch_dist


def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return torch_dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks; returns a CPU tensor. NCCL only reduces CUDA tensors, gloo takes CPU ones.
    Without a process group it returns the input."""
    if not is_initialized():
        return tensor
    on_device = tensor.cuda() if torch_dist.get_backend() == "nccl" else tensor.cpu()
    torch_dist.all_reduce(on_device)
    return on_device.cpu()


def all_gather_cat(tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate each rank's CPU tensor (sizes may differ) along `dim`, rank order; small tensors only."""
    if not is_initialized():
        return tensor
    gathered = [None] * world_size()
    torch_dist.all_gather_object(gathered, tensor.cpu())  # our own processes' tensors
    return torch.cat(gathered, dim=dim)


def barrier() -> None:
    if is_initialized():
        torch_dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first (e.g. builds a cache), then the others."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()
