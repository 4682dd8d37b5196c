"""Evaluate a run: FID, reconstruction MSE, supervised inpainting, anomaly detection (AUPRC).

    python -m lfbm_dist.evaluate --run RUN_DIR --metrics fid,recon,inpaint [eval.fid_num_samples=10000 ...]
    accelerate launch lfbm_dist/evaluate.py --run RUN_DIR --metrics fid          # any number of ranks
    python -m lfbm_dist.evaluate --export RUN_DIR/export --metrics anomaly

Loads the newest complete checkpoint of RUN_DIR (or --checkpoint DIR, or an --export directory),
writes RUN_DIR/metrics.json (merged with earlier results) and TensorBoard scalars `eval/*`.
Every FID carries the network, image resolution and sample count that produced it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "lfbm_dist"

import torch  # noqa: E402

from lfbm_dist import dist  # noqa: E402
from lfbm_dist.checkpoint import CheckpointError, latest  # noqa: E402
from lfbm_dist.config import ConfigError, load_config  # noqa: E402
from lfbm_dist.fastpath import FastPath  # noqa: E402

METRICS = ("fid", "recon", "inpaint", "anomaly", "aggpost")


def init_distributed(timeout_min: float) -> torch.device:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank())
        return torch.device("cuda", dist.local_rank())
    return torch.device("cpu")


def load_model(args, overrides):
    from lfbm_dist.export import checkpoint_state_dict, load_exported
    from lfbm_dist.factory import build_model

    if args.export:
        model, cfg = load_exported(args.export, overrides=overrides)
        return model, cfg, None
    ckpt = Path(args.checkpoint) if args.checkpoint else latest(args.run)
    if ckpt is None:
        raise CheckpointError(f"{args.run}: no complete checkpoint to evaluate")
    cfg = load_config(ckpt / "config.yaml", overrides)
    state = checkpoint_state_dict(ckpt)
    images_seen = json.loads((ckpt / "trainer_state.json").read_text())["images_seen"]
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval(), cfg, images_seen


def run_metrics(model, cfg, metrics: list[str], device: torch.device, writer=None, images_seen=None) -> dict:
    from lfbm_dist.data.eval_reader import identity, iter_uint8
    from lfbm_dist.data.memory import to_model_range
    from lfbm_dist.metrics import fid as fidlib
    from lfbm_dist.metrics.inception import load_inception
    from lfbm_dist.metrics.sampling import sample_images

    e, lv, rank, world = cfg.eval, cfg.langevin, dist.rank(), dist.world_size()
    results: dict = {}

    def float_batches(split, limit, with_labels=False):
        for images, idx, labels in iter_uint8(cfg, split, limit, rank, world, e.fid_batch):
            x = to_model_range(images).to(device)
            yield (x, idx, labels) if with_labels else (x, idx)

    inception, ref = None, None
    if "fid" in metrics or "inpaint" in metrics:
        inception = load_inception(e.inception).to(device)
        settings = {"data": identity(cfg, "train"), "resolution": cfg.data.resolution,
                    "channels": cfg.generator.image_channels, "ref_samples": e.fid_ref_samples,
                    "network": inception.name}
        compute = lambda: fidlib.image_stats(
            (imgs for imgs, _, _ in iter_uint8(cfg, "train", e.fid_ref_samples, rank, world, e.fid_batch)),
            inception)
        mu_r, sigma_r, n_ref, cache = fidlib.reference_stats(settings, Path(e.cache_dir), compute)
        ref = (mu_r, sigma_r)
        results.update({"fid_network": inception.name, "fid_image_resolution": cfg.data.resolution,
                        "fid_ref_images": n_ref, "fid_ref_cache": cache})
    if "fid" in metrics:
        stats = fidlib.generated_stats(lambda idx: sample_images(model, idx, e.seed, device), inception,
                                       e.fid_num_samples, e.fid_batch, device)
        results["fid"] = fidlib.frechet_distance(*stats.mu_sigma(), *ref)
        results["fid_num_samples"] = e.fid_num_samples
    if "recon" in metrics:
        from lfbm_dist.metrics.reconstruction import reconstruction_mse

        results.update(reconstruction_mse(model, float_batches(e.split, e.recon_samples), e.seed,
                                          lv.test_num_steps, lv.step_size))
    if "inpaint" in metrics:
        from lfbm_dist.metrics.inpainting import inpainting_metrics

        completed = fidlib.FeatureStats()
        grid: list[torch.Tensor] = []

        def on_completed(c, x, mask, done):
            if c == 0:
                completed.update(inception(fidlib.to_uint8(done)))
            if len(grid) < 3 * 8 and c < 2:
                grid.extend([x[:4] * mask[:4], done[:4]] if c == 0 else [done[:4]])

        results.update(inpainting_metrics(model, float_batches(e.split, e.inpaint_samples), e.seed,
                                          lv.test_num_steps, lv.step_size, e.inpaint_completions, e.inpaint_mask,
                                          on_completed))
        completed.all_reduce()
        results["inpaint_fid"] = fidlib.frechet_distance(*completed.mu_sigma(), *ref)
        if writer is not None and grid:
            import torchvision

            writer.add_image("eval/inpainting", torchvision.utils.make_grid(
                torch.cat(grid).cpu().clamp(-1, 1), nrow=4, normalize=True, value_range=(-1, 1)), images_seen or 0)
    if "anomaly" in metrics:
        from lfbm_dist.metrics import anomaly

        if cfg.data.heldout_class < 0:
            raise ConfigError("anomaly: set data.heldout_class (the class left out of training)")
        terms = anomaly.collect_terms(model, float_batches("test", 0, with_labels=True), cfg.data.heldout_class,
                                      e.seed, lv.test_num_steps, lv.step_size,
                                      add_noise=e.anomaly_protocol == "noisy-ap")
        results.update(anomaly.summarize(dist.all_gather_cat(terms, dim=1), e.anomaly_protocol))
        results.update({"anomaly_heldout_class": cfg.data.heldout_class, "anomaly_langevin_steps": lv.test_num_steps})
    if "aggpost" in metrics:
        from lfbm_dist.metrics.aggregated_posterior import aggregated_posterior

        results.update(aggregated_posterior(model, float_batches("train", e.recon_samples), e.seed,
                                            lv.num_steps, lv.step_size))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run directory (its newest complete checkpoint; results written here)")
    parser.add_argument("--checkpoint", help="a specific checkpoint directory")
    parser.add_argument("--export", help="an export directory (model.safetensors + config.yaml)")
    parser.add_argument("--metrics", default="fid,recon", help=f"comma list of {', '.join(METRICS)}")
    parser.add_argument("--out", help="metrics.json path (default RUN_DIR/metrics.json)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval.fid_num_samples=1000")
    args = parser.parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not (args.run or args.checkpoint or args.export):
        print(f"error: unknown metric {bad[0]!r}" if bad else "error: give --run, --checkpoint or --export",
              file=sys.stderr)
        return 2
    from lfbm_dist.data.shards import DataError
    from lfbm_dist.metrics.inception import InceptionError

    try:
        model, cfg, images_seen = load_model(args, args.overrides)
        device = init_distributed(cfg.train.collective_timeout_min)
        model.to(device)
        # NHWC + cuDNN autotuning for the 50k-sample FID and long-run inference; compile stays off
        # here: evaluation shapes vary (last batches) and each one would recompile.
        FastPath.resolve(dataclasses.replace(cfg.perf, compile="off"), device).apply(model)
        run_dir = Path(args.run or cfg.train.run_dir)
        writer = None
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        results = run_metrics(model, cfg, metrics, device, writer, images_seen)
    except (CheckpointError, ConfigError, DataError, InceptionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if dist.is_main():
        results["images_seen"] = images_seen
        out = Path(args.out) if args.out else run_dir / "metrics.json"
        merged = json.loads(out.read_text()) if out.is_file() else {}
        merged.update(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        for key, value in results.items():
            if isinstance(value, float):
                writer.add_scalar(f"eval/{key}", value, images_seen or 0)
        writer.close()
        print(json.dumps(results, indent=2, sort_keys=True))
        print(f"wrote {out}; TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'} (scalars eval/*, images eval/*)")
    if dist.is_initialized():
        dist.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
