"""Draw samples, or complete images under a mask, from a checkpoint or an exported model.

    python -m lfbm_dist.sample --run RUN_DIR --num 64 --out samples/            # PNGs + grid.png
    python -m lfbm_dist.sample --export RUN_DIR/export --complete a.png b.png --mask center --out done/

Samples are index-seeded (`--seed`): sample i is the same image whatever --batch is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _save(images: torch.Tensor, out: Path, names: list[str]) -> None:
    from .metrics.fid import to_uint8

    arr = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    for a, name in zip(arr, names):
        Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(out / f"{name}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run")
    parser.add_argument("--checkpoint")
    parser.add_argument("--export")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--complete", nargs="*", default=[], help="images to complete (inpainting)")
    parser.add_argument("--mask", default="center", help="center | region:SIZE | saltpepper:PERCENT")
    parser.add_argument("--completions", type=int, default=4)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if not (args.run or args.checkpoint or args.export):
        print("error: give --run, --checkpoint or --export", file=sys.stderr)
        return 2
    import torchvision

    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.masks import MaskSpecError, make_mask
    from .evaluate import load_model
    from .metrics.inpainting import inpaint
    from .metrics.sampling import sample_images

    try:
        model, cfg, _ = load_model(args, [])
        if args.complete:
            make_mask(args.mask, cfg.data.resolution)  # validates the spec
    except (CheckpointError, ConfigError, MaskSpecError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    args.out.mkdir(parents=True, exist_ok=True)
    res, channels = cfg.data.resolution, cfg.generator.image_channels
    if not args.complete:
        shown = []
        for start in range(0, args.num, args.batch):
            idx = list(range(start, min(args.num, start + args.batch)))
            images = sample_images(model, idx, args.seed, device)
            _save(images, args.out, [f"sample_{i:06d}" for i in idx])
            shown.append(images.cpu())
        grid = torch.cat(shown)
    else:
        rows = []
        for i, path in enumerate(args.complete):
            try:
                img = Image.open(path).convert("RGB" if channels == 3 else "L").resize((res, res), Image.BICUBIC)
            except OSError as exc:
                print(f"error: cannot read {path}: {exc}", file=sys.stderr)
                return 2
            arr = np.asarray(img, dtype=np.uint8)
            x = torch.from_numpy(arr.reshape(res, res, channels).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
            x = x.to(device)
            mask = make_mask(args.mask, res, Path(path).stem, args.seed)[None].float().to(device)
            done = [inpaint(model, x, mask, [i], args.seed, cfg.langevin.test_num_steps, cfg.langevin.step_size, c)
                    for c in range(args.completions)]
            _save(torch.cat(done), args.out, [f"{Path(path).stem}_completion{c}" for c in range(args.completions)])
            rows.append(torch.cat([x, x * mask, *done]).cpu())
        grid = torch.cat(rows)
    torchvision.utils.save_image(grid, args.out / "grid.png", nrow=8 if not args.complete else args.completions + 2,
                                 normalize=True, value_range=(-1, 1))
    print(f"wrote {len(grid)} images and {args.out / 'grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
