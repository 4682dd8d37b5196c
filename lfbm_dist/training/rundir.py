"""Run-directory rules: a new run never mixes with an old one.

* Into a directory that holds checkpoints, a run starts only with `train.resume=auto` (continue
  it), or `train.overwrite=true` (its artefacts are moved aside to RUN_DIR/old-<time>/ first);
  otherwise it refuses in one line that offers those and a new `train.run_dir`.
* Workers restarted by torch elastic's agent (TORCHELASTIC_RESTART_COUNT > 0) resume from the newest
  complete checkpoint as if `train.resume=auto` were given: a failed rank or node costs the steps
  since the last snapshot, not a human.
* A run whose newest checkpoint already reached `train.total_kimg` says so and exits 0 — also when
  relaunched with its original command (no `train.resume`): same model, seed and total_kimg.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import Config
from .checkpoint import CheckpointError, check_compatible, latest, list_complete, resolve_resume

_ARTEFACTS = ("checkpoints", "tensorboard", "logs", "trainer_state.json", "metrics.json", "config.yaml")


@dataclass(frozen=True)
class RunState:
    kind: str  # new | resuming | complete
    checkpoint: Path | None
    images_seen: int = 0

    def describe(self) -> str:
        if self.kind == "new":
            return "new run"
        if self.kind == "complete":
            return f"already complete at kimg {self.images_seen / 1000:g} ({self.checkpoint.name})"
        return f"resumed from {self.checkpoint.name} at kimg {self.images_seen / 1000:g}"


def _images_seen(ckpt: Path) -> int:
    try:
        return int(json.loads((ckpt / "trainer_state.json").read_text())["images_seen"])
    except (OSError, ValueError, KeyError):
        return int(ckpt.name.split("-")[1])


def elastic_restart() -> int:
    """How many times torch elastic's agent has restarted this job's workers (torchrun / accelerate
    launch with --max-restarts): after a rank or node failure they continue from the newest complete
    checkpoint by themselves, with no flag and no human."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def inspect(cfg: Config) -> RunState:
    """What starting this config would do; CheckpointError (one line) if it must not start."""
    t = cfg.train
    if t.resume == "none" and elastic_restart() > 0:  # the checkpoints are this very job's
        t = t.model_copy(update={"resume": "auto"})
        cfg = cfg.model_copy(update={"train": t})
    run_dir = Path(t.run_dir)
    newest = latest(run_dir)
    if t.resume == "none":
        if newest is not None and not t.overwrite and _finished_same_run(newest, cfg):
            return RunState("complete", newest, _images_seen(newest))
        if newest is not None and not t.overwrite:
            raise CheckpointError(
                f"{run_dir} holds checkpoints of an earlier run (newest {newest.name}, kimg "
                f"{_images_seen(newest) / 1000:g}): continue it with train.resume=auto, start elsewhere with "
                f"train.run_dir=NEW_DIR, or set train.overwrite=true to move its artefacts aside"
            )
        return RunState("new", None)
    ckpt = resolve_resume(cfg)
    if ckpt is None:  # resume=auto in a fresh directory
        return RunState("new", None)
    seen = _images_seen(ckpt)
    total = int(round(t.total_kimg * 1000))
    return RunState("complete" if seen >= total else "resuming", ckpt, seen)


def _finished_same_run(ckpt: Path, cfg: Config) -> bool:
    """The newest checkpoint is this very run's, finished: the same model config (check_compatible),
    seed and length, and it reached the end. Anything else in the directory is another run."""
    try:
        check_compatible(ckpt, cfg)
        saved = yaml.safe_load((ckpt / "config.yaml").read_text())["train"]
    except (CheckpointError, OSError, KeyError, TypeError, yaml.YAMLError):
        return False
    t = cfg.train
    same = saved.get("seed") == t.seed and saved.get("total_kimg") == t.total_kimg
    return same and _images_seen(ckpt) >= int(round(t.total_kimg * 1000))


def move_aside(run_dir: Path) -> Path | None:
    """train.overwrite: the earlier run's artefacts go to RUN_DIR/old-<time>/ (nothing is deleted)."""
    present = [run_dir / name for name in _ARTEFACTS if (run_dir / name).exists()]
    if not present or not list_complete(run_dir) and not (run_dir / "checkpoints").exists():
        return None
    dest = run_dir / time.strftime("old-%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=False)
    for path in present:
        path.rename(dest / path.name)
    return dest
