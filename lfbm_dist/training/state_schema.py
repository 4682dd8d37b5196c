"""The training state's layout, defined once.

A snapshot is one flat dict of CPU tensors, the same whatever layout wrote it (DDP, ZeRO-1/2, any
world size): for every parameter NAME of the plain model,
    param/NAME        its float32 value (ZeRO: the fp32 master copy)
    exp_avg/NAME      Adam's first moment   (torch Adam's own state names)
    exp_avg_sq/NAME   Adam's second moment
    step/NAME         Adam's step count, a float32 scalar
and for every persistent buffer NAME (BatchNorm statistics, flow permutations)
    buffer/NAME       its value
Files hold them in KIND_ORDER (buffers first: shard 0, always rank 0's). Everything that builds or
reads a state uses `key` and the names here; nothing else spells them.
"""

from __future__ import annotations

PARAM, BUFFER, STEP = "param", "buffer", "step"
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")  # = torch.optim.Adam's state keys and DeepSpeed's names for them
KIND_ORDER = (BUFFER, STEP, PARAM, *ADAM_MOMENTS)
MODEL_KINDS = (PARAM, BUFFER)  # what a model's state dict holds


def key(kind: str, name: str) -> str:
    return f"{kind}/{name}"


def kind_of(state_key: str) -> str:
    return state_key.split("/", 1)[0]


def name_of(state_key: str) -> str:
    return state_key.split("/", 1)[1]


def file_rank(state_key: str) -> int:
    """Position of the key's kind in KIND_ORDER (the order of the state files)."""
    return KIND_ORDER.index(kind_of(state_key))
