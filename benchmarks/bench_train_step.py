"""Benchmark one LFBM training iteration (K posterior Langevin steps + the learning step). Prints JSON.

    python benchmarks/bench_train_step.py --config celebahq256 --batch-per-gpu 32 [--steps 5] [--compile]
    python benchmarks/bench_train_step.py --config quickstart --batch-per-gpu 16

Two implementations of the same iteration are timed in the same process, on the same inputs:
  * "lfbm_dist": our path — parameters frozen during Langevin (no weight gradients), generator
    passes in bf16 autocast when the config says so (train.precision) on GPU, channels-last and
    cuDNN autotuning on GPU, optional torch.compile of the generator;
  * "plain_eager": how the authors' code runs — float32, parameters left trainable, PyTorch's
    default precision settings (TF32 convolutions allowed, no cuDNN autotuning), no compilation.
FLOPs are counted analytically from the generator's convolutions (lfbm_dist/flops.py, stated in
the output); images/s and TFLOP/s are medians over the timed steps; data loading is excluded.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfbm_dist.config import load_config  # noqa: E402
from lfbm_dist.factory import build_model, build_optimizer  # noqa: E402
from lfbm_dist.flops import iteration_flops_per_image  # noqa: E402
from lfbm_dist.inference import langevin_posterior  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # timing boundary: a deliberate host–device sync


def plain_eager_langevin(model, x, z, num_steps, step_size, sigma):
    """The authors' loop: fp32, all parameters trainable, grad of the summed log-posterior."""
    z = z.clone().requires_grad_(True)
    for _ in range(num_steps):
        x_hat = model.generator(z)
        log_post = model.prior.log_prob(z).sum() - ((x - x_hat) ** 2).sum() / (2 * sigma**2)
        grad = torch.autograd.grad(log_post, z)[0]
        z = (z + 0.5 * step_size**2 * grad + step_size * torch.randn_like(z)).detach().requires_grad_(True)
    return z.detach()


def run_variant(name: str, cfg, batch: int, steps: int, warmup: int, device: torch.device, compile_gen: bool):
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    fast = name == "lfbm_dist"
    autocast_dtype = torch.bfloat16 if (fast and cfg.train.precision == "bf16") else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = fast  # autotuning: our path only
        if fast:
            model.generator.to(memory_format=torch.channels_last)
    if fast and compile_gen:
        model.generator = torch.compile(model.generator)
    lv = cfg.langevin
    res = cfg.data.resolution
    x = (torch.rand(batch, cfg.generator.image_channels, res, res, device=device) * 2 - 1)
    if device.type == "cuda" and fast:
        x = x.contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    langevin_s, learning_s = [], []
    for i in range(warmup + steps):
        z0 = torch.randn(batch, cfg.generator.nz, device=device)
        _sync(device)
        t0 = time.perf_counter()
        if fast:
            z = langevin_posterior(model.generator, model.prior, x, num_steps=lv.num_steps, step_size=lv.step_size,
                                   sigma=lv.sigma, z_init=z0, autocast_dtype=autocast_dtype)
        else:
            z = plain_eager_langevin(model, x, z0, lv.num_steps, lv.step_size, lv.sigma)
        _sync(device)
        t1 = time.perf_counter()
        loss, _ = model(x, z, autocast_dtype=autocast_dtype)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            langevin_s.append(t1 - t0)
            learning_s.append(t2 - t1)
    flops = iteration_flops_per_image(model.generator if not compile_gen else build_model(cfg).generator.to(device),
                                      cfg.generator.nz, lv.num_steps)
    step_s = statistics.median(a + b for a, b in zip(langevin_s, learning_s))
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "images_per_sec": round(batch / step_s, 3),
        "achieved_tflops": round(batch * flops["total"] / step_s / 1e12, 4),
        "step_s_median": round(step_s, 5),
        "langevin_share": round(statistics.median(langevin_s) / step_s, 4),
        "learning_share": round(statistics.median(learning_s) / step_s, 4),
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS (both variants so far)",
        "generator_autocast": str(autocast_dtype) if autocast_dtype else "float32",
        "flops_per_image": flops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="preset name in configs/ (e.g. celebahq256) or a path")
    parser.add_argument("--batch-per-gpu", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the generator (our path)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    path = Path(args.config)
    if not path.is_file():
        path = ROOT / "configs" / f"{args.config}.yaml"
    cfg = load_config(path, args.overrides)
    device = torch.device(args.device)
    out = {"benchmark": "train_step", "config": path.stem, "batch_per_gpu": args.batch_per_gpu,
           "langevin_steps": cfg.langevin.num_steps, "resolution": cfg.data.resolution,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "flops_note": "2·MACs of the generator's (transposed) convolutions; Langevin step = 2F, learning = 3F",
           "variants": {}}
    variants = ["lfbm_dist"] + ([] if args.skip_baseline else ["plain_eager"])
    for name in variants:
        out["variants"][name] = run_variant(name, cfg, args.batch_per_gpu, args.steps, args.warmup, device,
                                            args.compile and name == "lfbm_dist")
    if len(variants) == 2:
        out["speedup_vs_plain_eager"] = round(out["variants"]["lfbm_dist"]["images_per_sec"]
                                              / out["variants"]["plain_eager"]["images_per_sec"], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
