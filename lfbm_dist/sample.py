"""Draw samples, or complete images under a mask, from a checkpoint or an exported model.

    lfbm-sample --run RUN_DIR --num 64 --out samples/                    # PNGs + grid.png
    lfbm-sample --export RUN_DIR/export --complete a.png b.png --mask center --out done/ \
        --completions 4 langevin.test_num_steps=200

Samples are index-seeded (`--seed`): sample i is the same image whatever --batch is. Completion
runs `langevin.test_num_steps` inference steps per completion (override it for a quicker result).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path.pop(0)  # run as a script: lfbm_dist/ must not shadow top-level packages

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lfbm_dist import cli, logs  # noqa: E402
from lfbm_dist.progress import Progress  # noqa: E402

log = logging.getLogger("lfbm_dist")
CPU_CHAIN_STEPS_PER_S = 1000  # rough 2-core rate at 32² (images × steps per second), for the up-front estimate


def _save(images: torch.Tensor, out: Path, names: list[str]) -> None:
    from lfbm_dist.metrics.fid import to_uint8

    arr = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    for a, name in zip(arr, names):
        Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(out / f"{name}.png")


def _read(path: str, resolution: int, channels: int) -> torch.Tensor:
    from lfbm_dist.data.errors import DataError

    try:
        img = Image.open(path).convert("RGB" if channels == 3 else "L").resize((resolution, resolution), Image.BICUBIC)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    arr = np.asarray(img, dtype=np.uint8).reshape(resolution, resolution, channels)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, C, R, R)


def _samples(model, args, device) -> torch.Tensor:
    from lfbm_dist.metrics.sampling import sample_images

    shown = []
    with Progress(args.num, "sampling") as bar:
        for start in range(0, args.num, args.batch):
            idx = list(range(start, min(args.num, start + args.batch)))
            images = sample_images(model, idx, args.seed, device)
            _save(images, args.out, [f"sample_{i:06d}" for i in idx])
            shown.append(images.cpu())
            bar.update(len(idx))
    return torch.cat(shown)


def _completions(model, cfg, args, device) -> torch.Tensor:
    from lfbm_dist.data.masks import make_mask
    from lfbm_dist.metrics.inpainting import inpaint

    res, channels, lv = cfg.data.resolution, cfg.generator.image_channels, cfg.langevin
    rows = []
    with Progress(len(args.complete) * args.completions, f"completing ({lv.test_num_steps} steps each)") as bar:
        for i, path in enumerate(args.complete):
            x = _read(path, res, channels).to(device)
            mask = make_mask(args.mask, res, Path(path).stem, args.seed)[None].float().to(device)
            done = []
            for c in range(args.completions):
                done.append(inpaint(model, x, mask, [i], args.seed, lv.test_num_steps, lv.step_size, c))
                bar.update(1)
            _save(torch.cat(done), args.out, [f"{Path(path).stem}_completion{c}" for c in range(args.completions)])
            rows.append(torch.cat([x, x * mask, *done]).cpu())
    return torch.cat(rows)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("lfbm-sample", __doc__)
    p.add_argument("--run", help="run directory (its newest complete checkpoint)")
    p.add_argument("--checkpoint", help="a specific checkpoint directory")
    p.add_argument("--export", help="an export directory (model.safetensors + config.yaml)")
    p.add_argument("--model", help="a Hub-ready model: a Hugging Face repository id (OWNER/NAME) or its folder")
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--batch", type=int, default=64, help="samples generated at once (default 64)")
    p.add_argument("--seed", type=int, default=0, help="sample i is drawn from a generator seeded by (seed, i)")
    p.add_argument(
        "--complete", nargs="*", default=[], metavar="IMAGE", help="images to complete (inpainting) instead of sampling"
    )
    p.add_argument("--mask", default="center", help="mask for --complete: center | region:SIZE | saltpepper:PERCENT")
    p.add_argument("--completions", type=int, default=4, help="completions per image, from different chain starts")
    p.add_argument("--out", required=True, type=Path, help="output folder (PNGs + grid.png)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="from a checkpoint: the EMA's weights (default) or the last step's raw ones")  # fmt: skip
    cli.add_overrides(p)
    args = p.parse_intermixed_args(argv)  # key=value overrides may come before or after options
    logs.setup()
    if not (args.run or args.checkpoint or args.export or args.model):
        print("error: give --run, --checkpoint, --export or --model", file=sys.stderr)
        return 2
    if args.num < 1 or args.batch < 1 or args.completions < 1:
        print("error: --num, --batch and --completions must be >= 1", file=sys.stderr)
        return 2
    return cli.run(lambda: _run(args))


def _run(args) -> int:
    from lfbm_dist.data.masks import make_mask
    from lfbm_dist.export import load_for_inference
    from lfbm_dist.image_grid import save_png

    model, cfg, _ = load_for_inference(args.run, args.checkpoint, args.export, args.overrides, args.model, args.weights)
    if args.complete:
        make_mask(args.mask, cfg.data.resolution)  # validates the spec before any work
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.complete:
        steps = len(args.complete) * args.completions * cfg.langevin.test_num_steps
        estimate = steps * (cfg.data.resolution / 32) ** 2 / CPU_CHAIN_STEPS_PER_S
        if device.type == "cpu" and estimate > 60:
            log.warning(
                "note: ≈ %.0f min on CPU (%d images × %d completions × %d steps at %d²); "
                "langevin.test_num_steps=… or --completions … make it quicker",
                estimate / 60,
                len(args.complete),
                args.completions,
                cfg.langevin.test_num_steps,
                cfg.data.resolution,
            )
        grid = _completions(model, cfg, args, device)
        nrow = args.completions + 2
    else:
        grid, nrow = _samples(model, args, device), 8
    save_png(grid, args.out / "grid.png", columns=nrow)
    log.info("wrote %d images and %s (%.0f s)", len(grid), args.out / "grid.png", time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
