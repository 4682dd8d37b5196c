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

import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import state_schema as schema
from ..config import Config
from .checkpoint import (
    CheckpointDamaged,
    CheckpointError,
    check_compatible,
    latest,
    list_complete,
    resolve_resume,
    verify,
)

_ARTEFACTS = (
    "checkpoints",
    "tensorboard",
    "logs",
    schema.TRAINER_STATE,
    "metrics.json",
    "config.yaml",
    "trackers.json",
    "wandb",
)


@dataclass(frozen=True)
class RunState:
    kind: str  # new | resuming | complete
    checkpoint: Path | None
    images_seen: int = 0
    manifest: dict | None = None  # verified at inspection: loading it does not hash it again

    def describe(self) -> str:
        if self.kind == "new":
            return "new run"
        if self.kind == "complete":
            return f"already complete at kimg {self.images_seen / 1000:g} ({self.checkpoint.name})"
        return f"resumed from {self.checkpoint.name} at kimg {self.images_seen / 1000:g}"


def _images_seen(ckpt: Path) -> int:
    try:
        return schema.images_seen(ckpt)
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
        if newest is not None and not t.overwrite and _same_seed_and_length(newest, cfg):
            manifest = _verified(newest)  # this run's own checkpoint, damaged: named, not taken for another run's
            if _finished(newest, cfg, manifest):
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
    manifest = _verified(ckpt)  # a damaged checkpoint is named here, not called complete or loaded half-way
    _refuse_other_trajectory(ckpt, cfg)
    seen = _images_seen(ckpt)
    total = int(round(t.total_kimg * 1000))
    return RunState("complete" if seen >= total else "resuming", ckpt, seen, manifest)


# Settings that change what a run is (its trajectory), beyond the architecture (checked by
# check_compatible): a resume may change the length, the layout, the logging and the fast path, not these.
TRAJECTORY = {
    "train": ("seed", "precision"),
    "langevin": ("num_steps", "step_size", "sigma", "add_noise"),
    "optim": ("lr_generator", "lr_prior", "lr_encoder", "beta1", "beta2", "lr_decay", "lr_decay_every_kimg",
              "grad_clip"),
    "data": ("dataset", "resolution", "hflip", "shuffle_buffer", "occlusion", "mask_seed", "max_samples",
             "heldout_class"),
}  # fmt: skip


def _refuse_other_trajectory(ckpt: Path, cfg: Config) -> None:
    try:
        saved = yaml.safe_load((ckpt / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # check_compatible names an unreadable config when the checkpoint is loaded
    current = cfg.to_dict()
    for section, keys in TRAJECTORY.items():
        for key in keys:
            before, now = saved.get(section, {}).get(key), current[section][key]
            if key in saved.get(section, {}) and before != now:
                raise CheckpointError(
                    f"{ckpt}: resuming would change {section}.{key} ({before!r} → {now!r}), which changes what "
                    f"the run is; resume with {section}.{key}={before}, or start a new run with train.run_dir=NEW_DIR"
                )


def _same_seed_and_length(ckpt: Path, cfg: Config) -> bool:
    """The newest checkpoint has this run's seed and length: this very run's, if its model config is
    the same too (_finished). Anything else in the directory is another run."""
    try:
        saved = yaml.safe_load((ckpt / "config.yaml").read_text())["train"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return False
    return saved.get("seed") == cfg.train.seed and saved.get("total_kimg") == cfg.train.total_kimg


def _finished(ckpt: Path, cfg: Config, manifest: dict) -> bool:
    """A verified checkpoint (its manifest: not hashed again) of this model config that reached the end."""
    try:
        check_compatible(ckpt, cfg, verified=manifest)
    except CheckpointError:
        return False
    return _images_seen(ckpt) >= int(round(cfg.train.total_kimg * 1000))


def _verified(ckpt: Path) -> dict:
    """verify(ckpt) (its manifest), naming the previous complete checkpoint to resume from if it is damaged."""
    try:
        return verify(ckpt)
    except CheckpointDamaged as exc:
        what = str(exc).split("; resume from an earlier")[0]
        earlier = [c for c in list_complete(ckpt.parent.parent) if c.name < ckpt.name]
        fix = (
            f"resume from the one before with train.resume={earlier[-1]}"
            if earlier
            else "no earlier checkpoint exists: start again with train.overwrite=true"
        )
        raise CheckpointDamaged(f"{what}; {fix}") from None


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
