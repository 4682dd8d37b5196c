"""Evaluate a run: FID, reconstruction MSE, supervised inpainting, anomaly detection (AUPRC), and the
aggregated-posterior diagnostic.

    lfbm-evaluate --run RUN_DIR --metrics fid,recon,inpaint [eval.fid_num_samples=10000 ...]
    accelerate launch lfbm_dist/evaluate.py --run RUN_DIR --metrics fid          # any number of ranks
    lfbm-evaluate --export RUN_DIR/export --metrics anomaly

Loads the newest complete checkpoint of RUN_DIR (or --checkpoint DIR, or an --export directory),
writes RUN_DIR/metrics.json (merged with earlier results) and, to the run's trackers (its
train.log_with: TensorBoard by default; the same MLflow / W&B runs as its training), scalars and images
under eval/, each tagged by the settings that produced it (two evaluations never overwrite each other).
Every FID carries the network, image resolution and sample count that produced it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path.pop(0)  # run as a script: lfbm_dist/ must not shadow top-level packages


from lfbm_dist import cli, logs  # noqa: E402
from lfbm_dist import state_schema as schema  # noqa: E402
from lfbm_dist.inference import GRAPHS  # noqa: E402
from lfbm_dist.training.evaluation import INPAINT_COLUMNS, METRICS, run_metrics, tensorboard_tags  # noqa: E402

log = logging.getLogger("lfbm_dist")


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("lfbm-evaluate", __doc__)
    p.add_argument("--run", help="run directory: its newest complete checkpoint; results are written here")
    p.add_argument("--checkpoint", help="a specific checkpoint directory")
    p.add_argument("--export", help="an export directory (model.safetensors + config.yaml)")
    p.add_argument("--metrics", default="fid,recon", help=f"comma list of {', '.join(METRICS)}")
    p.add_argument("--out", help="metrics.json path (default RUN_DIR/metrics.json)")
    p.add_argument(
        "--no-tensorboard", action="store_true", help="write no tracker events (TensorBoard, MLflow, W&B) for the run"
    )
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="from a checkpoint: the EMA's weights (default) or the last step's raw ones")  # fmt: skip
    p.add_argument("--ema-length", default="", metavar="L1,L2,…",
                   help="post-hoc EMA: FID for each EMA length (σ_rel, e.g. 0.05,0.1,0.15) rebuilt from the run's "
                   "power-function snapshots, beside the raw weights and the half-life EMA; a table and "
                   "RUN_DIR/fid_vs_ema_length.png")  # fmt: skip
    cli.add_overrides(p)
    args = p.parse_intermixed_args(argv)  # key=value overrides may come before or after options
    logs.setup()
    metrics = [m for m in args.metrics.split(",") if m]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not (args.run or args.checkpoint or args.export):
        print(
            f"error: unknown metric {bad[0]!r} (choose from {', '.join(METRICS)})"
            if bad
            else "error: give --run, --checkpoint or --export",
            file=sys.stderr,
        )
        return 2
    return cli.run(lambda: _evaluate(args, metrics))


def _evaluate(args, metrics: list[str]) -> int:
    from lfbm_dist.export import load_for_inference
    from lfbm_dist.training.compile_cache import use_compile_cache
    from lfbm_dist.training.engine import Engine
    from lfbm_dist.training.fastpath import FastPath
    from lfbm_dist.training.posthoc import fid_count

    model, cfg, images_seen = load_for_inference(
        args.run, args.checkpoint, args.export, args.overrides, weights=args.weights
    )
    run_dir = Path(args.run or cfg.train.run_dir)
    engine = Engine(cfg, None if args.no_tensorboard else _trackers(cfg, run_dir, images_seen or 0))
    logs.setup(engine.rank, engine.world_size)
    model.to(engine.device)
    # The training fast path (NHWC, cuDNN autotuning, the compiled Langevin step, each chain one CUDA
    # graph on CUDA) for the long test-time chains, in the training's precision; their batches are
    # padded to one size, so nothing recompiles.
    fast = FastPath.resolve(cfg.perf, engine.device)
    fast.apply(model)
    log.info("fast path: %s", fast.describe())
    if fast.compile_mode:  # the training run's compiled graphs, if they are there: a warm start
        log.info(use_compile_cache(cfg.perf.compile_cache, run_dir if run_dir.is_dir() else None))
    log.info("evaluating %s on %d rank(s) (%s): %s", args.export or args.checkpoint or run_dir,
             engine.world_size, engine.device, ", ".join(metrics))  # fmt: skip
    lengths = [float(x) for x in args.ema_length.split(",") if x.strip()]
    started = time.time()
    images: dict = {}
    chain = fast.test_time_runner(cfg.eval.fid_batch, FastPath.test_time_autocast(cfg))
    announce = (lambda line: log.info("time: %s", line)) if engine.is_main else (lambda _line: None)
    kw = {"show_progress": True, "chain": chain, "announce": announce, "extra_fids": fid_count(lengths)}
    results = run_metrics(model, cfg, metrics, engine.device, engine, images, **kw)
    results["weights"] = _weights_of(args)
    if args.ema_length:
        results.update(_posthoc(args, lengths, model, cfg, run_dir, engine, chain))
    if engine.is_main:
        results[schema.IMAGES_SEEN] = images_seen
        out = Path(args.out) if args.out else run_dir / "metrics.json"
        merged = json.loads(out.read_text()) if out.is_file() else {}
        merged.update(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        from lfbm_dist.files import write_atomic

        write_atomic(out, json.dumps(merged, indent=2, sort_keys=True) + "\n")
        _track(engine.open_trackers(), cfg, metrics, results, images, images_seen or 0)
        _summary(results, out, engine.trackers.describe(), time.time() - started)
    engine.end()
    return 0


def _weights_of(args) -> str:
    """Which weights were evaluated: the export's own (its metadata), else --weights."""
    if not args.export:
        return args.weights
    from safetensors import safe_open

    with safe_open(str(Path(args.export) / "model.safetensors"), "pt") as f:
        return (f.metadata() or {}).get("weights", "raw")


def _posthoc(args, lengths: list[float], model, cfg, run_dir: Path, engine, chain) -> dict:
    """--ema-length: FID by post-hoc EMA length (training/posthoc.py), the figure from rank 0."""
    from lfbm_dist.training.checkpoint import CheckpointError, latest
    from lfbm_dist.training.posthoc import FIGURE, draw, fid_by_ema_length

    if args.export:
        raise CheckpointError("--ema-length needs the run (--run or --checkpoint): an export keeps one set of weights")
    ckpt = Path(args.checkpoint) if args.checkpoint else latest(run_dir)
    found = fid_by_ema_length(model, cfg, run_dir, ckpt, lengths, engine, chain, device=engine.device)
    if engine.is_main:
        title = f"FID against EMA length: {run_dir.name}, {ckpt.name}, {cfg.eval.fid_num_samples} samples"
        found["fid_posthoc_figure"] = str(draw(found, run_dir / FIGURE, title))
        for length, fid in found["fid_posthoc"].items():
            log.info("  post-hoc EMA σ_rel %-6s FID %.3f", length, fid)
    return found


def _trackers(cfg, run_dir: Path, images_seen: int):
    """The run's own trackers, continued at the checkpoint's step (never purging training's events)."""
    from lfbm_dist.training.engine import TrackerSpec
    from lfbm_dist.training.engine.trackers import check_installed, flatten

    check_installed(cfg.train.log_with)
    params = flatten(cfg.to_dict())
    return TrackerSpec(tuple(cfg.train.log_with), run_dir, images_seen, False, True, params, {})


def _track(trackers, cfg, metrics: list[str], results: dict, images: dict, step: int) -> None:
    from lfbm_dist.image_grid import tile

    tags = tensorboard_tags(cfg, metrics)
    prefix = {
        "fid": "fid",
        "inpaint": "inpaint",
        "recon": "recon",
        "auprc": "anomaly",
        "anomaly": "anomaly",
        "aggpost": "aggpost",
    }
    for key, value in results.items():
        family = next((m for start, m in prefix.items() if key.startswith(start)), None)
        if isinstance(value, float) and family in tags:
            trackers.scalars({f"{tags[family]}/{key}": value}, step)
    for length, fid in results.get("fid_posthoc", {}).items():  # FID against EMA length, one scalar each
        trackers.scalars({f"{tags.get('fid', 'eval')}/fid_posthoc_std{length}": fid}, step)
    if results.get("fid_posthoc_figure"):
        import numpy as np
        import torch
        from PIL import Image

        rgb = np.asarray(Image.open(results["fid_posthoc_figure"]).convert("RGB"), dtype=np.float32) / 255
        trackers.image(f"{tags.get('fid', 'eval')}/fid_vs_ema_length", torch.from_numpy(rgb).permute(2, 0, 1), step)
    for name, grid in images.items():
        family = "fid" if name == "samples" else "inpaint"
        columns = len(INPAINT_COLUMNS) if name == "inpainting" else 8
        trackers.image(f"{tags[family]}/{name}", tile(grid, columns), step)


def _summary(results: dict, out: Path, trackers: list[str], wall_s: float) -> None:
    shown = [
        k
        for k in ("fid", "recon_mse", "inpaint_mse", "inpaint_fid", "inpaint_digit_fd", "auprc", "aggpost_gap_nats")
        if k in results
    ]
    log.info(
        "results (%s weights): %s  (%.0f s)", results.get("weights"), ", ".join(f"{k} {results[k]:.4g}" for k in shown),
        wall_s,
    )  # fmt: skip
    log.info("  all numbers: %s", out)
    log.info("  %s", GRAPHS.summary())
    for line in trackers:
        log.info("  %s (scalars and images under eval/)", line)


if __name__ == "__main__":
    sys.exit(main())
