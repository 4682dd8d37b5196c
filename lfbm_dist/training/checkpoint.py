"""Checkpoints: one format for every backend, atomic, verified on load, pruned safely.

Layout of one checkpoint (a directory under RUN_DIR/checkpoints/):

    ckpt-000000012800/                    name = images seen, zero-padded so names sort by progress
        state-00000-of-00002.safetensors  the full training state, unpartitioned, by name:
        state-00001-of-00002.safetensors    its keys and layout: lfbm_dist/state_schema.py
        TRAINER_STATE                     counters and best metrics (plain JSON)
        data_state_file(R)                each rank's data-stream positions
        CONFIG                            the resolved config that produced it
        MANIFEST                          format, shard files, and every file's size and sha256
        COMPLETE                          written last; a directory without it is never loaded
    (the files' names and their JSON keys: lfbm_dist/state_schema.py)

The state files hold the same bytes whoever wrote them: 1 rank or 8, DDP or ZeRO-1/2 (ZeRO assembles
the full values from its partitions first), because the split into files depends only on the
tensors (names and sizes, `train.snapshot_shard_mb`) and never on the world size. Any layout loads
any checkpoint, and export reads the same files. No RNG state is kept: all training randomness is
keyed by sample and step (seeding.py), so the state above is all an exact resume needs.

It is written into `ckpt-….tmp` and renamed when complete, so a crash during the write leaves the
previous checkpoint as the newest usable one; old ones are renamed to `….deleting` before they are
removed. Loading first checks the manifest, so a truncated or altered part is refused in one line.
Writing (possibly in the background): training/snapshots.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import state_schema as schema
from ..config import Config
from ..errors import LfbmError
from ..files import file_digest, write_atomic
from ..state_schema import BUFFER, EMA, MODEL_KINDS, file_rank, kind_of, name_of
from .hooks import NO_HOOKS, Hooks

log = logging.getLogger("lfbm_dist")
FORMAT = "lfbm_dist-checkpoint/2"
COMPLETE_MARKER, MANIFEST = schema.COMPLETE, schema.MANIFEST
UPGRADE = "lfbm-export --upgrade-checkpoint {}"  # converts the framework-file format of earlier versions
_ARCH_KEYS = ("generator", "prior", "inference")  # config sections that change the saved tensors


class CheckpointError(LfbmError, RuntimeError):
    pass


class CheckpointDamaged(CheckpointError):
    """A part of a complete checkpoint is missing or differs from what was written (its manifest)."""


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_complete(run_dir: str | Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("ckpt-") and "." not in p.name and (p / COMPLETE_MARKER).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def latest(run_dir: str | Path) -> Path | None:
    complete = list_complete(run_dir)
    return complete[-1] if complete else None


def assert_finite(state: dict[str, torch.Tensor], what: str = "refusing to save") -> None:
    """No checkpoint or export may hold NaN/Inf (one host sync per tensor: snapshots only)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{what}: non-finite values in '{name}'")


# ---------------------------------------------------------------------------- the state files
def plan_shards(state: dict[str, torch.Tensor | int], max_bytes: int) -> list[list[str]]:
    """The state's names split into files of at most max_bytes (one tensor may exceed it alone):
    a function of the tensors' sizes only (tensors, or their sizes in bytes: a snapshot plans before
    it copies), so every layout writes the same files."""
    order = sorted(state, key=lambda k: (file_rank(k), k))
    shards: list[list[str]] = [[]]
    used = 0
    for key in order:
        value = state[key]
        size = value if isinstance(value, int) else value.numel() * value.element_size()
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def shard_name(index: int, count: int) -> str:
    return f"state-{index:05d}-of-{count:05d}.safetensors"


def shard_owner(index: int, keys: list[str], world_size: int) -> int:
    """Which rank writes a shard: round robin, except that the model's buffers (BatchNorm statistics
    differ between ranks after a step) are always rank 0's, as in a single-process run."""
    return 0 if any(kind_of(k) == BUFFER for k in keys) else index % world_size


def write_shard(
    directory: Path, index: int, keys: list[str], count: int, state: dict[str, torch.Tensor]
) -> dict[str, dict]:
    """One state file, written atomically; its manifest entry ({name: {bytes, sha256}}), hashed by its
    writer straight after writing (from the page cache: safetensors writes from the tensors directly,
    and serialising to bytes first to hash them cost a 0.6 GB copy), so rank 0 never reads the other
    ranks' files back."""
    from safetensors.torch import save_file

    name = shard_name(index, count)
    partial = directory / f".{name}.partial"
    save_file({k: state[k].contiguous() for k in keys}, str(partial), metadata={"format": FORMAT})
    entry = {"bytes": partial.stat().st_size, "sha256": file_digest(partial)}
    partial.replace(directory / name)
    return {name: entry}


def write_text(directory: Path, name: str, text: str) -> dict[str, dict]:
    """A small file of a checkpoint, written atomically; its manifest entry."""
    write_atomic(directory / name, text)
    return {name: digest_entry(text.encode())}


def digest_entry(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_state(directory: Path, state: dict[str, torch.Tensor], shard_mb: float) -> int:
    """Every state file of `state`, written by this one process (a conversion, a test's dump).
    Returns how many files."""
    shards = plan_shards(state, int(shard_mb * 2**20))
    for index, keys in enumerate(shards):
        write_shard(directory, index, keys, len(shards), state)
    return len(shards)


def manifest_text(directory: Path, shards: int, writer: dict[str, Any], digests: dict | None = None) -> str:
    """The manifest: every file's size and sha256 — as their writers reported them (a snapshot), or
    read from the folder (digests None: the one-time converter)."""
    if digests is None:
        files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in (MANIFEST, COMPLETE_MARKER))
        digests = {
            p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files
        }
    return json.dumps(
        {
            "format": FORMAT,
            "shards": [shard_name(i, shards) for i in range(shards)],
            "written_by": writer,  # for the record only: loading does not depend on it
            "files": dict(sorted(digests.items())),
        },
        indent=1,
        sort_keys=True,
    )


def is_disk_full(exc: BaseException, root: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left" in text or "os error 28" in text or "Disk quota exceeded" in text:
        return True
    try:  # some writers only say "file write failed": look at the disk itself
        return shutil.disk_usage(root).free < (1 << 20)
    except OSError:
        return False


def disk_full(path: Path, root: Path) -> CheckpointError:
    previous = latest(root.parent)
    kept = f"previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
    return CheckpointError(f"disk full writing {path}; {kept}; free space, then resume with train.resume=auto")


def remove(directory: Path, hooks: Hooks = NO_HOOKS) -> None:
    """Rename first (atomic), then delete: no state in between looks like a complete checkpoint."""
    doomed = directory.with_name(directory.name + ".deleting")
    directory.rename(doomed)
    (doomed / COMPLETE_MARKER).unlink(missing_ok=True)
    hooks.in_prune()
    shutil.rmtree(doomed, ignore_errors=True)


# ---------------------------------------------------------------------------- reading
def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing {what}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: truncated or malformed {what} ({type(exc).__name__}); "
            "resume from an earlier checkpoint (train.resume=PATH)"
        ) from None


def _manifest(ckpt_dir: Path) -> dict[str, Any]:
    if not (ckpt_dir / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"{ckpt_dir}: incomplete checkpoint (no {COMPLETE_MARKER} marker)")
    path = ckpt_dir / MANIFEST
    manifest = read_json(path, "checkpoint manifest") if path.is_file() else {}
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{ckpt_dir}: written in an earlier lfbm_dist checkpoint format (framework files); "
            f"convert it once with `{UPGRADE.format(ckpt_dir)}`"
        )
    return manifest


def verify(ckpt_dir: Path) -> dict[str, Any]:
    """Every part present with the size and content it was written with (one line otherwise).
    Returns the manifest."""
    manifest = _manifest(ckpt_dir)
    for rel, want in manifest["files"].items():
        path = ckpt_dir / rel
        if not path.is_file():
            raise CheckpointDamaged(
                f"{ckpt_dir}: cannot load checkpoint: {rel} is missing; resume from an earlier "
                "checkpoint (train.resume=PATH)"
            )
        size = path.stat().st_size
        if size != want["bytes"] or file_digest(path) != want["sha256"]:
            how = (
                f"{size} bytes, written with {want['bytes']}"
                if size != want["bytes"]
                else "same size, but its sha256 differs from the one written in the manifest: changed since"
            )
            raise CheckpointDamaged(
                f"{ckpt_dir}: cannot load checkpoint: {rel} is truncated or altered ({how}); resume from an "
                "earlier checkpoint (train.resume=PATH)"
            )
    return manifest


def read_state(ckpt_dir: Path, verified: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The full training state, keyed as lfbm_dist/state_schema.py says; verified first unless the
    caller passes the manifest its own verify() returned (a start hashes a checkpoint once)."""
    from safetensors.torch import load_file

    manifest = verified or verify(ckpt_dir)
    state: dict[str, torch.Tensor] = {}
    for name in manifest["shards"]:
        try:
            state.update(load_file(str(ckpt_dir / name)))
        except Exception as exc:  # the digest matched, so the writer itself wrote something unreadable
            raise CheckpointError(f"{ckpt_dir}: cannot read {name} ({type(exc).__name__})") from None
    return state


def model_state_dict(state: dict[str, torch.Tensor], weights: str = "raw") -> dict[str, torch.Tensor]:
    """The model's state dict (parameters and buffers) out of a full training state: the raw weights, or
    weights="ema", the EMA's in their place (the raw ones if the state holds none: said in one line)."""
    model = {name_of(k): v for k, v in state.items() if kind_of(k) in MODEL_KINDS}
    if weights == "ema":
        ema = {name_of(k): v for k, v in state.items() if kind_of(k) == EMA}
        if not ema:
            log.info("lfbm_dist: this checkpoint holds no EMA (written before weight averaging): raw weights")
        model.update(ema)
    return model


def check_compatible(ckpt_dir: Path, cfg: Config, verified: dict[str, Any] | None = None) -> dict[str, Any]:
    """Refuse checkpoints of another architecture, and damaged ones (unless `verified`, the manifest
    verify() returned), with one clear line."""
    if verified is None:
        verify(ckpt_dir)
    try:
        saved_cfg = yaml.safe_load((ckpt_dir / schema.CONFIG).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{ckpt_dir}: unreadable checkpoint config ({type(exc).__name__})") from None
    state = read_json(ckpt_dir / schema.TRAINER_STATE, "trainer state")
    current = cfg.to_dict()
    for section in _ARCH_KEYS:
        if saved_cfg.get(section) != current[section]:
            diff = sorted(k for k in current[section] if saved_cfg.get(section, {}).get(k) != current[section][k])
            raise CheckpointError(
                f"{ckpt_dir}: checkpoint is from another model config ({section}.{diff[0] if diff else '?'} differs)"
            )
    return state


def data_states(ckpt_dir: Path) -> list[dict[str, Any]]:
    """Every rank's saved data position (the run may resume on another number of ranks)."""
    files = sorted(ckpt_dir.glob(schema.DATA_STATE_GLOB))
    return [read_json(f, "data position") for f in files]


def load(
    engine, plain, ckpt_dir: Path, cfg: Config, verified: dict[str, Any] | None = None, averages=None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Collective: restore model, optimizer and the weight averages (training/ema.py) into the prepared
    objects, whatever layout wrote the checkpoint and whatever layout reads it. Returns (trainer state,
    every rank's data position)."""
    manifest = verified or verify(ckpt_dir)  # the one hash of every part (rundir.inspect's, when it did it)
    trainer_state = check_compatible(ckpt_dir, cfg, manifest)
    positions = data_states(ckpt_dir)
    try:
        state = read_state(ckpt_dir, manifest)
        engine.load_full_state(plain, state)
        if averages is not None:
            averages.load(state, ckpt_dir)
    except CheckpointError:
        raise
    except Exception as exc:  # names that do not match the model, or a failing backend: name the checkpoint
        raise CheckpointError(
            f"{ckpt_dir}: cannot load checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
    return trainer_state, positions


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
