"""A checkpoint's files, the keys of its JSON files and its training state's layout, named once: the
trainer, the snapshot writer, the loaders, the converter (training/upgrade.py), the data feed and the
tests use these names; nothing else spells them.

A checkpoint directory RUN_DIR/checkpoints/ckpt-<images seen, 12 digits>/ holds
    TRAINER_STATE   trainer_state.json: the trainer's counters, keys TRAINER_KEYS (TrainerState's fields)
    CONFIG          config.yaml: the resolved config of the run that wrote it
    data_state_file(R)   data_state_rank<R>.json: rank R's data-stream positions, keys DATA_KEYS
    state-<i>-of-<n>.safetensors: the training state below
    MANIFEST        manifest.json: every file's size and sha256, the format and who wrote it
    COMPLETE        written last: the checkpoint is whole

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

import json
from pathlib import Path

# ---------------------------------------------------------------------------- the files
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"
DATA_STATE_GLOB = "data_state_rank*.json"


def data_state_file(rank: int) -> str:
    return f"data_state_rank{rank}.json"


# ---------------------------------------------------------------------------- the JSON files' keys
# trainer_state.json: the trainer's TrainerState fields (it writes them as they are; a test holds them equal)
STEPS_DONE, IMAGES_SEEN, SKIPPED_STEPS = "step", "images_seen", "skipped_steps"
GLOBAL_BATCH, VIRTUAL_STREAMS, CORRUPT_SAMPLES, BEST = "global_batch", "virtual_streams", "corrupt_samples", "best"
TRAINER_KEYS = (STEPS_DONE, IMAGES_SEEN, SKIPPED_STEPS, CORRUPT_SAMPLES, GLOBAL_BATCH, VIRTUAL_STREAMS, BEST)
# data_state_rank<R>.json (data/feeds.py): where each virtual stream is
DATA_EPOCH, DATA_STEP, DATA_STREAMS, DATA_GLOBAL_BATCH, DATA_POSITIONS = (
    "epoch",
    "step",
    "streams",
    "global_batch",
    "positions",
)
DATA_KEYS = (DATA_EPOCH, DATA_STEP, DATA_STREAMS, DATA_GLOBAL_BATCH, DATA_POSITIONS)


def trainer_state(ckpt_dir: str | Path) -> dict:
    """A checkpoint's (or a run directory's last) trainer_state.json, as written (checkpoint.read_json
    turns an unreadable one into one line)."""
    return json.loads((Path(ckpt_dir) / TRAINER_STATE).read_text())


def images_seen(ckpt_dir: str | Path) -> int:
    return int(trainer_state(ckpt_dir)[IMAGES_SEEN])


# ---------------------------------------------------------------------------- the training state

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
