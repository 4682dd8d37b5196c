"""Checkpoints: atomic, sharded the way the backend does it, verified on load, pruned safely.

Layout of one checkpoint (a directory under RUN_DIR/checkpoints/):

    ckpt-000000012800/            name = images seen, zero-padded so names sort by progress
        model.safetensors ...     the backend's own state (engine.save_state): model, optimizer, RNG
        trainer_state.json        counters and best metrics (plain JSON)
        data_state_rank{R}.json   each rank's data-stream positions
        config.yaml               the resolved config that produced it
        manifest.json             every file's size and sha256
        COMPLETE                  written last; a directory without it is never loaded

It is written into `ckpt-….tmp` and renamed when complete, so a crash during the write leaves the
previous checkpoint as the newest usable one; old ones are renamed to `….deleting` before they are
removed, so a kill while pruning never leaves a directory that looks complete without its files.
Loading first checks the manifest, so a truncated or altered part (weights, optimizer, RNG state,
JSON) is refused in one line instead of being half-loaded or silently skipped.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import Config
from ..errors import LfbmError
from ..files import apply_umask, file_digest, write_atomic
from . import faults

COMPLETE_MARKER = "COMPLETE"
MANIFEST = "manifest.json"
LAYOUT = "layout.json"  # backend, ZeRO stage and world size the native files were written with
FULL_STATE = "full_state.safetensors"  # DeepSpeed only: weights + Adam state, unpartitioned
_ARCH_KEYS = ("generator", "prior", "inference")  # config sections that change the saved tensors


class CheckpointError(LfbmError, RuntimeError):
    pass


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


def _manifest(directory: Path) -> dict[str, dict[str, Any]]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in (MANIFEST, COMPLETE_MARKER))
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files}


def _is_disk_full(exc: BaseException, root: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left" in text or "os error 28" in text or "Disk quota exceeded" in text:
        return True
    try:  # torch.save only says "file write failed": look at the disk itself
        return shutil.disk_usage(root).free < (1 << 20)
    except OSError:
        return False


def _disk_full(path: Path, root: Path) -> CheckpointError:
    previous = latest(root.parent)
    kept = f"previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
    return CheckpointError(f"disk full writing {path}; {kept}; free space, then resume with train.resume=auto")


def save(
    engine,
    plain: torch.nn.Module,
    cfg: Config,
    trainer_state: dict[str, Any],
    keep: int,
    data_state: dict[str, Any] | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    root = checkpoint_root(cfg.train.run_dir)
    name = f"ckpt-{int(trainer_state['images_seen']):012d}"
    final, tmp = root / name, root / f"{name}.tmp"
    assert_finite(plain.state_dict())
    try:
        if engine.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        engine.barrier()
        engine.save_state(tmp)
        if engine.uses_deepspeed:  # ZeRO files are partitioned: keep a full copy that any layout can load
            full = engine.full_state(plain)  # collective
            if engine.is_main:
                from safetensors.torch import save_file

                save_file(full, str(tmp / FULL_STATE))
        write_atomic(tmp / f"data_state_rank{engine.rank}.json", json.dumps(data_state or {}, sort_keys=True))
        faults.in_save(int(trainer_state["images_seen"]))
        engine.barrier()
        if engine.is_main:
            state_text = json.dumps(trainer_state, indent=2, sort_keys=True)
            write_atomic(tmp / "trainer_state.json", state_text)
            write_atomic(tmp / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            write_atomic(tmp / LAYOUT, json.dumps(engine.layout(), sort_keys=True))
            write_atomic(tmp / MANIFEST, json.dumps(_manifest(tmp), indent=1, sort_keys=True))
            write_atomic(tmp / COMPLETE_MARKER, "ok\n")
            apply_umask(tmp)
            if final.exists():  # same progress saved twice (e.g. final snapshot right after a periodic one)
                _remove(final)
            tmp.rename(final)
            write_atomic(Path(cfg.train.run_dir) / "trainer_state.json", state_text)
            for old in list_complete(cfg.train.run_dir)[:-keep]:
                _remove(old)
            for stale in [*root.glob("*.tmp"), *root.glob("*.deleting")]:
                shutil.rmtree(stale, ignore_errors=True)
    except Exception as exc:  # writers report a full disk as OSError, RuntimeError or their own types
        if _is_disk_full(exc, root):
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the newest complete one stays
            raise _disk_full(Path(getattr(exc, "filename", None) or tmp), root) from None
        raise
    engine.barrier()
    return final


def _remove(directory: Path) -> None:
    """Rename first (atomic), then delete: no state in between looks like a complete checkpoint."""
    doomed = directory.with_name(directory.name + ".deleting")
    directory.rename(doomed)
    (doomed / COMPLETE_MARKER).unlink(missing_ok=True)
    faults.in_prune()
    shutil.rmtree(doomed, ignore_errors=True)


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


def verify(ckpt_dir: Path) -> None:
    """Every part present with the size and content it was written with (one line otherwise)."""
    if not (ckpt_dir / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"{ckpt_dir}: incomplete checkpoint (no {COMPLETE_MARKER} marker)")
    manifest_path = ckpt_dir / MANIFEST
    if not manifest_path.is_file():
        return  # written by lfbm_dist before manifests: the loaders' own checks apply
    for rel, want in read_json(manifest_path, "checkpoint manifest").items():
        path = ckpt_dir / rel
        if not path.is_file():
            raise CheckpointError(
                f"{ckpt_dir}: cannot load checkpoint: {rel} is missing; resume from an earlier "
                "checkpoint (train.resume=PATH)"
            )
        if path.stat().st_size != want["bytes"] or file_digest(path) != want["sha256"]:
            raise CheckpointError(
                f"{ckpt_dir}: cannot load checkpoint: {rel} is truncated or altered "
                f"({path.stat().st_size} bytes, written with {want['bytes']}); resume from an "
                "earlier checkpoint (train.resume=PATH)"
            )


def check_compatible(ckpt_dir: Path, cfg: Config) -> dict[str, Any]:
    """Refuse checkpoints of another architecture, and damaged ones, with one clear line."""
    verify(ckpt_dir)
    try:
        saved_cfg = yaml.safe_load((ckpt_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{ckpt_dir}: unreadable checkpoint config ({type(exc).__name__})") from None
    state = read_json(ckpt_dir / "trainer_state.json", "trainer state")
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
    files = sorted(ckpt_dir.glob("data_state_rank*.json"))
    return [read_json(f, "data position") for f in files]


def saved_layout(ckpt_dir: Path) -> dict[str, Any]:
    if (ckpt_dir / LAYOUT).is_file():
        return read_json(ckpt_dir / LAYOUT, "checkpoint layout")
    # written before layouts were recorded: DeepSpeed's own folder tells the backend, not the world size
    return {"backend": "deepspeed" if (ckpt_dir / "pytorch_model").is_dir() else "ddp"}


def _full_state_of(ckpt_dir: Path, saved: dict[str, Any], group_names: list[list[str]]) -> dict[str, torch.Tensor]:
    """Weights and Adam state of a checkpoint, unpartitioned, by parameter name."""
    from safetensors.torch import load_file

    if saved["backend"] == "deepspeed":
        if not (ckpt_dir / FULL_STATE).is_file():
            raise CheckpointError(
                f"{ckpt_dir}: a ZeRO checkpoint without {FULL_STATE} resumes only under "
                f"ZeRO on its own world size ({saved.get('world_size', 'unknown')} ranks)"
            )
        return load_file(str(ckpt_dir / FULL_STATE))
    weights = load_file(str(ckpt_dir / "model.safetensors"))
    optim = torch.load(ckpt_dir / "optimizer.bin", weights_only=True, map_location="cpu")
    names = [n for group in group_names for n in group]  # torch numbers parameters group by group
    out = {f"param/{n}": weights[n].float() for n in names}
    for index, name in enumerate(names):
        st = optim["state"].get(index, {})
        out[f"step/{name}"] = torch.as_tensor(st.get("step", 0.0)).float()
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{key}/{name}"] = st[key].float() if key in st else torch.zeros_like(out[f"param/{name}"])
    return out


def load(engine, plain, ckpt_dir: Path, cfg: Config) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Collective: restore model and optimizer (and RNG, when the layout is the same) into the prepared
    objects — natively where the layout allows, else through the full state (another world size or
    backend). Returns (trainer state, every rank's saved data position)."""
    state = check_compatible(ckpt_dir, cfg)
    positions = data_states(ckpt_dir)
    saved = saved_layout(ckpt_dir)
    try:
        if engine.loads_natively(saved):
            engine.load_state(ckpt_dir)
        else:
            engine.load_full_state(plain, _full_state_of(ckpt_dir, saved, engine.group_names))
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or foreign files: name the checkpoint, not a stack trace
        raise CheckpointError(
            f"{ckpt_dir}: cannot load checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
    faults.after_load(engine, plain)
    return state, positions


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
