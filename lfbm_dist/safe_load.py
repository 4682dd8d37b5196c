"""Never execute code from a checkpoint: force torch.load(weights_only=True) everywhere.

Accelerate already loads with weights_only=True; DeepSpeed's checkpoint engine and zero_to_fp32
pass weights_only=False. Inside `restricted_torch_load()` every torch.load call is forced to the
weights-only unpickler, which accepts tensors, containers and primitive types plus the few plain
DeepSpeed data classes its checkpoints hold (allowlisted below) — and refuses anything else.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Iterator

import torch

# Plain data holders DeepSpeed pickles into ZeRO checkpoints (found by loading with weights_only=True).
_DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def _deepspeed_globals() -> list:
    found = []
    for dotted in _DEEPSPEED_SAFE_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass  # DeepSpeed absent or reorganised: the weights-only unpickler then refuses those files
    return found


@contextlib.contextmanager
def restricted_torch_load() -> Iterator[None]:
    original = torch.load

    @functools.wraps(original)
    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = weights_only_load
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            yield
    finally:
        torch.load = original
