"""What metrics and data need from the process group, as an interface: the engine implements it
(training/engine/, the one package that talks to torch.distributed) and `SINGLE_PROCESS` answers
for one process, so every metric runs on a laptop without any distributed setup."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Collectives(Protocol):
    rank: int
    world_size: int
    is_main: bool

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor: ...
    def all_gather_cat(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor: ...
    def broadcast_object(self, obj: Any, src: int = 0) -> Any: ...
    def barrier(self) -> None: ...


class SingleProcess:
    rank, world_size, is_main = 0, 1, True

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_gather_cat(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self) -> None:
        pass


SINGLE_PROCESS = SingleProcess()
