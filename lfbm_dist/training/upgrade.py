"""One-off conversion of checkpoints written before the single format (`lfbm-export
--upgrade-checkpoint DIR`): the only place that still knows the framework files of earlier versions.

Those checkpoints held Accelerate's `save_state` files (DDP: model.safetensors with the model's state
dict, optimizer.bin with torch Adam's state by parameter index, random_states_*.pkl) or DeepSpeed's
ZeRO folders plus full_state.safetensors (weights and Adam state, unpartitioned). The conversion
verifies the old manifest, builds the same full state the trainer writes now, writes it beside the
old directory, and swaps the two: the old one is kept as `<name>.pre-v2` (never loaded: the name has
a dot) until its owner removes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .. import state_schema as schema
from ..config import load_config
from ..files import apply_umask, file_digest, write_atomic
from . import checkpoint
from .build import build_model, build_optimizer
from .checkpoint import COMPLETE_MARKER, FORMAT, MANIFEST, CheckpointError


def _verify_old(ckpt: Path) -> dict:
    if not (ckpt / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"{ckpt}: incomplete checkpoint (no {COMPLETE_MARKER} marker): nothing to convert")
    manifest = checkpoint.read_json(ckpt / MANIFEST, "checkpoint manifest") if (ckpt / MANIFEST).is_file() else {}
    if manifest.get("format") == FORMAT:
        raise CheckpointError(f"{ckpt}: already in the current format ({FORMAT})")
    for rel, want in manifest.items():
        path = ckpt / rel
        if not path.is_file() or path.stat().st_size != want["bytes"] or file_digest(path) != want["sha256"]:
            raise CheckpointError(f"{ckpt}: cannot convert: {rel} is missing, truncated or altered")
    return manifest


def _old_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The full state (as the trainer writes it now) of an old-format checkpoint."""
    from safetensors.torch import load_file

    cfg = load_config(ckpt / schema.CONFIG)
    torch.manual_seed(0)  # the values are replaced; only the names and the group order matter
    model = build_model(cfg)
    groups = [
        [n for n, p in model.named_parameters() if any(p is q for q in g["params"])]
        for g in build_optimizer(cfg, model).param_groups
    ]
    params = {n for n, _ in model.named_parameters()}
    buffers = [n for n in model.state_dict() if n not in params]  # persistent ones only, as state dicts
    if (ckpt / "full_state.safetensors").is_file():  # DeepSpeed ZeRO: weights and Adam state by name already
        state = load_file(str(ckpt / "full_state.safetensors"))
        if buffers:  # BatchNorm statistics, flow permutations: only in DeepSpeed's own model files
            if not (ckpt / "pytorch_model").is_dir():
                raise CheckpointError(
                    f"{ckpt}: full_state.safetensors holds no model buffers ({buffers[0]} …) and DeepSpeed's "
                    "pytorch_model/ folder beside it is missing: cannot convert"
                )
            from .engine.zero import consolidate_zero_checkpoint

            weights = consolidate_zero_checkpoint(ckpt)
            state.update({schema.key(schema.BUFFER, n): weights[n] for n in buffers})
        return state
    if not (ckpt / "model.safetensors").is_file() or not (ckpt / "optimizer.bin").is_file():
        raise CheckpointError(
            f"{ckpt}: neither Accelerate's model.safetensors + optimizer.bin nor full_state.safetensors; "
            "a ZeRO checkpoint without full_state.safetensors cannot be converted"
        )
    weights = load_file(str(ckpt / "model.safetensors"))
    try:
        optim = torch.load(ckpt / "optimizer.bin", weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 — pickle.UnpicklingError, or torch's refusal of its globals
        raise CheckpointError(
            f"{ckpt}: optimizer.bin cannot be read as plain tensors ({type(exc).__name__}): it is a pickle that "
            "would run code to load, which lfbm_dist never does; re-save it as plain tensors with the lfbm_dist "
            "version that wrote it (torch.save of the state dict), then convert again"
        ) from None
    state = {schema.key(schema.BUFFER, n): weights[n] for n in buffers}
    for index, name in enumerate(n for group in groups for n in group):  # torch numbers them group by group
        st = optim["state"].get(index, {})
        state[schema.key(schema.PARAM, name)] = weights[name].float()
        state[schema.key(schema.STEP, name)] = torch.as_tensor(st.get("step", 0.0)).float()
        for moment in schema.ADAM_MOMENTS:  # torch Adam's names in the old optimizer.bin as in the state
            state[schema.key(moment, name)] = (
                st[moment].float() if moment in st else torch.zeros_like(weights[name].float())
            )
    return state


def upgrade(ckpt: Path, shard_mb: float = 2048.0) -> Path:
    """Convert one checkpoint in place (see the module docstring). Returns where the old one went."""
    ckpt = Path(ckpt)
    _verify_old(ckpt)
    state = _old_state(ckpt)
    tmp, kept = ckpt.with_name(ckpt.name + ".upgrade.tmp"), ckpt.with_name(ckpt.name + ".pre-v2")
    if kept.exists():
        raise CheckpointError(f"{kept} exists: remove it, or move it away, before converting again")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shards = checkpoint.write_state(tmp, state, shard_mb)
    for part in [schema.TRAINER_STATE, schema.CONFIG, *(p.name for p in ckpt.glob(schema.DATA_STATE_GLOB))]:
        shutil.copyfile(ckpt / part, tmp / part)
    writer = {"converted_from": "lfbm_dist checkpoint format 1"}
    write_atomic(tmp / MANIFEST, checkpoint.manifest_text(tmp, shards, writer))
    write_atomic(tmp / COMPLETE_MARKER, "ok\n")
    apply_umask(tmp)
    (ckpt / COMPLETE_MARKER).unlink()  # from here on, the old directory is never taken for a checkpoint
    ckpt.rename(kept)
    tmp.rename(ckpt)
    return kept
