"""Put trained runs side by side: one picture (samples and reconstructions of the same test images, one
column per run) and a short table (sample quality, reconstruction MSE, log-likelihood of the inferred
latents under each run's prior).

    lfbm-compare runs/quickstart/flow runs/quickstart/gaussian --out runs/quickstart/compare.png

Sample quality is the digit proxy (metrics/digits.py: seconds on a CPU) for MNIST runs, or FID with
--fid N for any data (minutes on a CPU). Every number comes from index-seeded chains and samples, so
the runs are compared on the same noise and the same test images.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path.pop(0)  # run as a script: lfbm_dist/ must not shadow top-level packages

import torch  # noqa: E402

from lfbm_dist import cli, logs  # noqa: E402

log = logging.getLogger("lfbm_dist")
SEED = 0


def _evaluate(run: Path, args) -> tuple[dict, dict]:
    """(numbers, images) of one run."""
    from lfbm_dist.data.eval_reader import iter_uint8
    from lfbm_dist.data.memory import to_model_range
    from lfbm_dist.export import load_for_inference
    from lfbm_dist.metrics.sampling import infer, sample_images
    from lfbm_dist.training.build import eval_data
    from lfbm_dist.training.evaluation import run_metrics

    overrides = [
        f"eval.recon_samples={args.recon_images}",
        f"eval.fid_num_samples={args.fid or 1000}",
        f"eval.seed={SEED}",
        *args.overrides,
    ]
    model, cfg, _ = load_for_inference(run=str(run), overrides=overrides)
    device = torch.device("cpu")
    mnist = cfg.data.source == "memory" and cfg.data.dataset == "mnist"
    metrics = ["recon", "aggpost"] + (["digits"] if mnist else []) + (["fid"] if args.fid else [])
    numbers = run_metrics(model, cfg, metrics, device, show_progress=True)
    numbers["prior"] = cfg.prior.kind if cfg.inference.kind == "langevin" else f"{cfg.prior.kind} (VAE)"
    first = next(iter_uint8(eval_data(cfg), cfg.eval.split, 8, 0, 1, 8))
    x = to_model_range(first.images)
    z = infer(model, x, first.indices, SEED, cfg.langevin.test_num_steps, cfg.langevin.step_size, tag="compare")
    with torch.no_grad():
        recon = model.generator(z).float()
    samples = sample_images(model, list(range(args.samples)), SEED, device)
    return numbers, {"samples": samples, "originals": x, "reconstructions": recon}


def _picture(results: list[tuple[Path, dict, dict]], out: Path) -> None:
    from PIL import Image, ImageDraw

    from .image_grid import tile

    panels = []
    for run, numbers, images in results:
        grid = tile(images["samples"][:64], 8, pad_value=1.0)
        pairs = tile(torch.cat([images["originals"], images["reconstructions"]]), 8, pad_value=1.0)
        body = torch.cat([grid, torch.ones(3, 12, grid.shape[2]), pairs], dim=1)
        img = Image.fromarray((body.permute(1, 2, 0).numpy() * 255).astype("uint8")).resize(
            (body.shape[2] * 3, body.shape[1] * 3), Image.NEAREST
        )
        canvas = Image.new("RGB", (img.width, img.height + 60), "white")
        canvas.paste(img, (0, 60))
        draw = ImageDraw.Draw(canvas)
        draw.text((6, 4), f"{numbers['prior']} prior: {run.name}", fill="black", font_size=20)
        draw.text((6, 32), "samples (top); test images and their reconstructions (bottom)", fill="gray", font_size=14)
        panels.append(canvas)
    total = Image.new(
        "RGB", (sum(p.width for p in panels) + 20 * (len(panels) - 1), max(p.height for p in panels)), "white"
    )
    x = 0
    for p in panels:
        total.paste(p, (x, 0))
        x += p.width + 20
    out.parent.mkdir(parents=True, exist_ok=True)
    total.save(out)


ROWS = [
    ("digit_fd", "sample quality: digit FD (proxy, lower is better)", "{:.1f}"),
    ("recognisable", "samples a digit classifier is sure of (≥ 0.9)", "{:.0%}"),
    ("fid", "FID (lower is better)", "{:.1f}"),
    ("recon_mse", "reconstruction MSE per pixel, [0, 1] (lower is better)", "{:.4f}"),
    ("aggpost_log_p_prior", "log p(z) of inferred latents under the run's prior", "{:.1f}"),
    ("aggpost_gap_nats", "  minus their log N(z; 0, I): what the prior learned", "{:+.1f}"),
]


def _table(results: list[tuple[Path, dict, dict]]) -> str:
    names = [f"{n['prior']} ({run.name})" for run, n, _ in results]
    width = max(len(label) for _, label, _ in ROWS) + 2
    lines = [" " * width + "".join(f"{name:>22}" for name in names)]
    for key, label, fmt in ROWS:
        if any(key in n for _, n, _ in results):
            cells = [fmt.format(n[key]) if key in n else "–" for _, n, _ in results]
            lines.append(f"{label:<{width}}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("lfbm-compare", __doc__)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (their newest checkpoints)")
    p.add_argument("--out", type=Path, required=True, help="the side-by-side picture (PNG)")
    p.add_argument("--samples", type=int, default=64, help="samples shown per run (default 64)")
    p.add_argument("--recon-images", type=int, default=200, help="test images for the reconstruction MSE")
    p.add_argument("--fid", type=int, default=0, help="also FID with this many samples (slow on a CPU)")
    p.add_argument("--overrides", nargs="*", default=[], metavar="key=value", help=cli.OVERRIDES_HELP)
    args = p.parse_args(argv)
    logs.setup()

    def body() -> int:
        results = []
        for run in args.runs:
            log.info("evaluating %s ...", run)
            numbers, images = _evaluate(run, args)
            results.append((run, numbers, images))
        _picture(results, args.out)
        log.info("\n%s\n", _table(results))
        log.info("picture: %s", args.out)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
