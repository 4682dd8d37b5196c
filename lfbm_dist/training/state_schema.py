"""The training state's layout, defined once.

A snapshot is one flat dict of CPU tensors, the same whatever layout wrote it (DDP, ZeRO-1/2, any
world size): for every parameter NAME of the plain model,
    param/NAME        its float32 value (ZeRO: the fp32 master copy)
    exp_avg/NAME      Adam's first moment   (torch Adam's own state names)
    exp_avg_sq/NAME   Adam's second moment
    step/NAME         Adam's step count, a float32 scalar
and for every persistent buffer NAME (BatchNorm statistics, flow permutations)
    buffer/NAME       its value
and the weight averages of every parameter (training/ema.py), float32:
    ema/NAME          the EMA with a half-life (ema.halflife_kimg)
    ema_std0.05/NAME  a power-function EMA of relative standard deviation 0.05 (ema.posthoc_std; EDM2)
Files hold them in KIND_ORDER (buffers first: shard 0, always rank 0's). Everything that builds or
reads a state uses `key` and the names here; nothing else spells them.
"""

from __future__ import annotations

PARAM, BUFFER, STEP = "param", "buffer", "step"
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")  # = torch.optim.Adam's state keys and DeepSpeed's names for them
EMA = "ema"
KIND_ORDER = (BUFFER, STEP, PARAM, *ADAM_MOMENTS, EMA)  # the power-function EMAs' kinds come last
MODEL_KINDS = (PARAM, BUFFER)  # what a model's state dict holds


def key(kind: str, name: str) -> str:
    return f"{kind}/{name}"


def kind_of(state_key: str) -> str:
    return state_key.split("/", 1)[0]


def name_of(state_key: str) -> str:
    return state_key.split("/", 1)[1]


def power_ema(std: float) -> str:
    """The kind of the power-function EMA of relative standard deviation `std`."""
    return f"{EMA}_std{std:g}"


def is_ema(kind: str) -> bool:
    return kind == EMA or kind.startswith(f"{EMA}_std")


def file_rank(state_key: str) -> int:
    """Position of the key's kind in KIND_ORDER (the order of the state files)."""
    kind = kind_of(state_key)
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
