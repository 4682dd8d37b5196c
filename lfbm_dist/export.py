"""Consolidate a checkpoint (plain / DDP / DeepSpeed ZeRO-1/2) into one safetensors file + config.

    python -m lfbm_dist.export --checkpoint runs/x/checkpoints/ckpt-000006030000 --out runs/x/export
    python -m lfbm_dist.export --run runs/x --out runs/x/export          # newest complete checkpoint

Writes OUT/model.safetensors (float32 weights of generator + prior) and OUT/config.yaml. Sampling
and evaluation load that pair with `load_exported` — no DeepSpeed, no pickles.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from .checkpoint import COMPLETE_MARKER, CheckpointError, assert_finite, latest
from .config import Config, ConfigError, load_config
from .factory import build_model
from .models import LFBM
from .safe_load import restricted_torch_load


def checkpoint_state_dict(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The model's full float32 state dict from any checkpoint layout we write."""
    if not (ckpt_dir / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"{ckpt_dir}: incomplete checkpoint (no {COMPLETE_MARKER} marker)")
    plain = ckpt_dir / "model.safetensors"
    if plain.is_file():
        from safetensors.torch import load_file

        return load_file(str(plain))
    if (ckpt_dir / "pytorch_model").is_dir():  # DeepSpeed ZeRO shards, written by accelerate save_state
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with restricted_torch_load():
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag="pytorch_model")
        return {k: v.float().contiguous() for k, v in state.items()}
    raise CheckpointError(f"{ckpt_dir}: no model.safetensors and no DeepSpeed pytorch_model/ shards")


def export(ckpt_dir: Path, out_dir: Path) -> Path:
    cfg = load_config(ckpt_dir / "config.yaml")
    state = checkpoint_state_dict(ckpt_dir)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt_dir}: weights do not match its config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    assert_finite(state, str(ckpt_dir))
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "lfbm_dist-export/1", "source": str(ckpt_dir)})
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return out_dir / "model.safetensors"


def load_exported(path: str | Path, map_location: str | torch.device = "cpu",
                  overrides: list[str] | tuple[str, ...] = ()) -> tuple[LFBM, Config]:
    """(model in eval mode, config) from an export directory or its model.safetensors."""
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    cfg = load_config(folder / "config.yaml", overrides)
    model = build_model(cfg)
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(map_location)), strict=True)
    return model.eval().to(map_location), cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint directory")
    source.add_argument("--run", type=Path, help="a run directory: its newest complete checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    ckpt = args.checkpoint or latest(args.run)
    try:
        if ckpt is None:
            raise CheckpointError(f"{args.run}: no complete checkpoint")
        written = export(ckpt, args.out)
    except (CheckpointError, ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {ckpt} -> {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
