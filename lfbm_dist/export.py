"""Export a checkpoint's model (whatever backend wrote it) as one safetensors file + config, load
checkpoints or exports for inference, and convert checkpoints of earlier versions.

    lfbm-export --run runs/x --out runs/x/export          # newest complete checkpoint of a run
    lfbm-export --checkpoint runs/x/checkpoints/ckpt-000006030000 --out runs/x/export
    lfbm-export --upgrade-checkpoint runs/x/checkpoints/ckpt-000006030000   # earlier format, in place

Writes OUT/model.safetensors (float32 weights of generator + prior) and OUT/config.yaml, and for the
Hugging Face Hub OUT/config.json, a README.md model card and samples.png (lfbm_dist/hub.py). Sampling
and evaluation load it with `load_exported` or `hub.load_pretrained` — no DeepSpeed, no pickles.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path.pop(0)  # run as a script: lfbm_dist/ must not shadow top-level packages

import torch  # noqa: E402
import yaml  # noqa: E402

from lfbm_dist import cli, logs  # noqa: E402
from lfbm_dist import state_schema as schema  # noqa: E402
from lfbm_dist.config import Config, load_config  # noqa: E402
from lfbm_dist.files import apply_umask, write_atomic  # noqa: E402
from lfbm_dist.models import LFBM  # noqa: E402
from lfbm_dist.training.build import build_model  # noqa: E402
from lfbm_dist.training.checkpoint import (  # noqa: E402
    CheckpointError,
    assert_finite,
    latest,
    model_state_dict,
    read_state,
)

log = logging.getLogger("lfbm_dist")


def checkpoint_state_dict(ckpt_dir: Path, weights: str = "raw") -> dict[str, torch.Tensor]:
    """The model's full float32 state dict from a checkpoint (verified first): the same files for
    every backend and world size that wrote it (training/checkpoint.py); weights="ema": the EMA's."""
    return model_state_dict(read_state(ckpt_dir), weights)


def _model_from(state: dict[str, torch.Tensor], cfg: Config, source: Path) -> LFBM:
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def describe_without_local_paths(cfg: Config) -> Config:
    """The config as a published model should say it: the training data by name (the shard index's
    folder and file), the run by its folder's name — nothing of the trainer's file system."""
    d, t = cfg.data, cfg.train
    shards = [f"{Path(s).parent.name}/{Path(s).name}" if Path(s).parent.name else Path(s).name for s in d.shards]
    return cfg.model_copy(
        update={
            "data": d.model_copy(update={"shards": shards}),
            "train": t.model_copy(update={"run_dir": Path(t.run_dir).name}),
            "eval": cfg.eval.model_copy(update={"cache_dir": type(cfg.eval)().cache_dir}),
        }
    )


def export(
    ckpt_dir: Path, out_dir: Path, overrides: list[str] | tuple[str, ...] = (), weights: str = "ema",
    local_paths: bool = False,
) -> Path:  # fmt: skip
    """overrides change the exported config's non-architecture settings (e.g. eval.*, langevin.test_num_steps);
    weights: the EMA's (default) or the raw ones of the last step; local_paths: keep the training data's
    and the run's paths in the config and the model card (by default they are described by name)."""
    cfg = load_config(ckpt_dir / schema.CONFIG, overrides)
    state = checkpoint_state_dict(ckpt_dir, weights)
    model = _model_from(state, cfg, ckpt_dir)
    assert_finite(state, str(ckpt_dir))
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".model.safetensors.tmp"
    source = str(ckpt_dir) if local_paths else f"{ckpt_dir.parent.parent.name}/{ckpt_dir.name}"
    cfg = cfg if local_paths else describe_without_local_paths(cfg)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp),
        metadata={"format": "lfbm_dist-export/1", "source": source, "weights": weights},
    )
    tmp.replace(out_dir / "model.safetensors")
    write_atomic(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    from lfbm_dist.hub import write_hub_files  # config.json (from config.yaml), model card, samples.png

    seen = schema.images_seen(ckpt_dir)
    write_hub_files(out_dir, model, cfg, ckpt_dir, seen, weights, source)
    apply_umask(out_dir)
    return out_dir / "model.safetensors"


def load_exported(
    path: str | Path, map_location: str | torch.device = "cpu", overrides: list[str] | tuple[str, ...] = ()
) -> tuple[LFBM, Config]:
    """(model in eval mode, config) from an export directory or its model.safetensors."""
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    _agree(folder)
    cfg = load_config(folder / "config.yaml", overrides)
    try:
        state = load_file(str(folder / "model.safetensors"), device=str(map_location))
    except Exception as exc:
        raise CheckpointError(f"{folder}/model.safetensors: cannot read the export ({type(exc).__name__})") from None
    return _model_from(state, cfg, folder).eval().to(map_location), cfg


def _agree(folder: Path) -> None:
    """An export's config.json (the Hub's file, which users read and edit) says what its config.yaml
    says (config.yaml is what the model is built from); one line naming the first difference if not."""
    if not (folder / "config.json").is_file():
        return

    def flatten(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    try:
        listed = flatten(json.loads((folder / "config.json").read_text()).get("config") or {})
        built = flatten(yaml.safe_load((folder / "config.yaml").read_text()) or {})
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{folder}: unreadable config.json or config.yaml ({type(exc).__name__})") from None
    for key in sorted(set(listed) | set(built)):
        if listed.get(key) != built.get(key):
            raise CheckpointError(
                f"{folder}: config.json and config.yaml disagree at {key} ({listed.get(key)!r} in config.json, "
                f"{built.get(key)!r} in config.yaml); the model is built from config.yaml: make them agree, or "
                "export again (lfbm-export)"
            )


def load_pretrained(
    id_or_path: str, map_location: str | torch.device = "cpu", overrides: list[str] | tuple[str, ...] = ()
) -> tuple[LFBM, Config]:
    """(model in eval mode, config) from a Hub-ready model folder or a Hugging Face repository id."""
    from lfbm_dist.hub import resolve

    return load_exported(resolve(id_or_path), map_location, overrides)


def load_for_inference(
    run: str | None = None,
    checkpoint: str | None = None,
    export_dir: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    model_id: str | None = None,
    weights: str = "ema",
) -> tuple[LFBM, Config, int | None]:
    """(model in eval mode, config, images seen or None) from a Hub model (repository id or folder),
    an export, a checkpoint or a run's newest one; from a checkpoint, `weights` says which (the EMA's
    by default, the raw ones of the last step); an export carries the weights it was made with."""
    if model_id:
        model, cfg = load_pretrained(model_id, overrides=overrides)
        return model, cfg, None
    if export_dir:
        model, cfg = load_exported(export_dir, overrides=overrides)
        return model, cfg, None
    ckpt = Path(checkpoint) if checkpoint else latest(run) if run else None
    if ckpt is None:
        raise CheckpointError(f"{run}: no complete checkpoint (train first, or give --checkpoint / --export)")
    cfg = load_config(ckpt / schema.CONFIG, overrides)
    model = _model_from(checkpoint_state_dict(ckpt, weights), cfg, ckpt)
    images_seen = schema.images_seen(ckpt)
    return model.eval(), cfg, images_seen


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("lfbm-export", __doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint directory")
    source.add_argument("--run", type=Path, help="a run directory: its newest complete checkpoint")
    source.add_argument(
        "--upgrade-checkpoint",
        type=Path,
        metavar="DIR",
        help="convert a checkpoint written by an earlier lfbm_dist (framework files) to the current format",
    )
    p.add_argument("--out", type=Path, help="output directory (model.safetensors + config.yaml)")
    weights = "the EMA's weights (default) or the last step's raw ones; the model card says which"
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help=weights)
    p.add_argument("--local-paths", action="store_true",
                   help="keep the training data's and the run's local paths in the config and the card")  # fmt: skip
    cli.add_overrides(p)
    args = p.parse_intermixed_args(argv)  # key=value overrides may come before or after options
    logs.setup()

    def body() -> int:
        if args.upgrade_checkpoint:
            from lfbm_dist.training.upgrade import upgrade

            kept = upgrade(args.upgrade_checkpoint)
            log.info("converted %s to the current format; the old files are in %s", args.upgrade_checkpoint, kept)
            return 0
        if args.out is None:
            p.error("--out is required to export")
        ckpt = args.checkpoint or latest(args.run)
        if ckpt is None:
            raise CheckpointError(f"{args.run}: no complete checkpoint")
        log.info("exporting %s (verifying, consolidating) ...", ckpt)
        written = export(ckpt, args.out, args.overrides, args.weights, args.local_paths)
        log.info("exported %s -> %s", ckpt, written)
        log.info("  sample:   lfbm-sample --export %s --num 64 --out %s/samples", args.out, args.out)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
