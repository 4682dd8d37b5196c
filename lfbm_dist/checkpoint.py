"""Checkpoints: atomic, sharded the way the backend does it, resumable, pruned.

Layout of one checkpoint (a directory under RUN_DIR/checkpoints/):

    ckpt-000000012800/            name = images seen, zero-padded so names sort by progress
        model.safetensors ...     Accelerate `save_state`: model, optimizer, every rank's RNG
        trainer_state.json        counters and best metrics (plain JSON)
        data_state_rank{R}.json   each rank's data-stream position (ranks read different samples)
        config.yaml               the resolved config that produced it
        COMPLETE                  written last; a directory without it is never loaded

It is written into `ckpt-….tmp` and renamed when complete, so a crash during the write
leaves the previous checkpoint as the newest usable one. Loading never unpickles arbitrary
objects: Accelerate loads tensors with weights_only=True, our state is JSON.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from . import faults
from .config import Config
from .safe_load import restricted_torch_load

COMPLETE_MARKER = "COMPLETE"
# Config sections that change the shapes or meaning of the saved tensors.
_ARCH_KEYS = ("generator", "prior", "inference")


class CheckpointError(RuntimeError):
    pass


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_complete(run_dir: str | Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp")
             and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(run_dir: str | Path) -> Path | None:
    complete = list_complete(run_dir)
    return complete[-1] if complete else None


def assert_finite(state: dict[str, torch.Tensor], what: str = "refusing to save") -> None:
    """No checkpoint or export may hold NaN/Inf (one host sync per tensor: snapshots only)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{what}: non-finite values in '{name}'")


def save(engine, plain: torch.nn.Module, cfg: Config, trainer_state: dict[str, Any],
         keep: int, data_state: dict[str, Any] | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    root = checkpoint_root(cfg.train.run_dir)
    name = f"ckpt-{int(trainer_state['images_seen']):012d}"
    final, tmp = root / name, root / f"{name}.tmp"
    assert_finite(plain.state_dict())
    if engine.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    engine.barrier()
    engine.accelerator.save_state(str(tmp), safe_serialization=True)
    (tmp / f"data_state_rank{engine.rank}.json").write_text(json.dumps(data_state or {}, sort_keys=True))
    faults.in_save(int(trainer_state["images_seen"]))
    engine.barrier()
    if engine.is_main:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True))
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if final.exists():  # same progress saved twice (e.g. final snapshot right after a periodic one)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_complete(cfg.train.run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    engine.barrier()
    return final


def check_compatible(ckpt_dir: Path, cfg: Config) -> dict[str, Any]:
    """Refuse checkpoints of another architecture, and truncated ones, with one clear line."""
    if not (ckpt_dir / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"{ckpt_dir}: incomplete checkpoint (no {COMPLETE_MARKER} marker)")
    try:
        saved_cfg = yaml.safe_load((ckpt_dir / "config.yaml").read_text())
        state = json.loads((ckpt_dir / "trainer_state.json").read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{ckpt_dir}: unreadable checkpoint metadata ({exc})") from None
    current = cfg.to_dict()
    for section in _ARCH_KEYS:
        if saved_cfg.get(section) != current[section]:
            diff = sorted(k for k in current[section] if saved_cfg.get(section, {}).get(k) != current[section][k])
            raise CheckpointError(f"{ckpt_dir}: checkpoint is from another model config "
                                  f"({section}.{diff[0] if diff else '?'} differs)")
    return state


def load(engine, ckpt_dir: Path, cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """Collective: restore model/optimizer/RNG into the prepared objects.

    Returns (trainer state, this rank's data position — empty if the checkpoint has none for it).
    """
    state = check_compatible(ckpt_dir, cfg)
    data_file = ckpt_dir / f"data_state_rank{engine.rank}.json"
    data_state = json.loads(data_file.read_text()) if data_file.is_file() else {}
    try:
        with restricted_torch_load():
            engine.accelerator.load_state(str(ckpt_dir))
    except Exception as exc:  # truncated or foreign files: name the checkpoint, not a stack trace
        raise CheckpointError(f"{ckpt_dir}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
    return state, data_state


def resolve_resume(cfg: Config) -> Path | None:
    mode = cfg.train.resume
    if mode == "none":
        return None
    if mode == "auto":
        return latest(cfg.train.run_dir)
    path = Path(mode)
    if not path.is_dir():
        raise CheckpointError(f"train.resume: checkpoint directory {path} not found")
    return path


def lr_scale(images_seen: int, decay: float, decay_every_kimg: float) -> float:
    """Exponential decay as a pure function of progress (world-size independent, exact on resume)."""
    if decay_every_kimg <= 0:
        return 1.0
    return decay ** math.floor(images_seen / (decay_every_kimg * 1000.0))
