"""Benchmark one LFBM training iteration (K posterior Langevin steps + the learning step). Prints JSON.

    python benchmarks/bench_train_step.py --config celebahq256 --batch-per-gpu 32 [--steps 5] [--ablate]
    python benchmarks/bench_train_step.py --config quickstart --batch-per-gpu 50 perf.compile=on

Variants, timed in the same process on the same inputs, their timed steps interleaved:
  * "plain_eager": how the authors' code runs — float32, parameters left trainable during Langevin,
    PyTorch's default precision settings (TF32 convolutions allowed, no cuDNN autotuning), no
    compilation, NCHW.
  * "lfbm_dist": what `lfbm_dist/train.py` runs for this config on this device — the same
    lfbm_dist.inference code (its ChainRunner) with lfbm_dist.training.fastpath.FastPath resolved from
    `perf.*` (override it with key=value arguments, e.g. perf.compile=on) and train.precision's bf16
    autocast.
  * with --ablate, a ladder that adds one change at a time (no weight gradients + fused update →
    + bf16 autocast → + channels-last → + cuDNN autotuning → + torch.compile of the log-posterior
    (one graph per Langevin step, the update eager: the earlier fast path, kept here only, in
    `per_step_compiled_langevin`) → + CUDA graphs of that → + the compiled Langevin step, the chain a
    loop over it (the product's form: one step graph, the whole chain captured as one CUDA graph on
    CUDA) → + a large chain batch (the chains of
    --chain-batch images at once, learning still in micro-batches of --batch-per-gpu)), so each
    change is kept only where it shows a gain. Steps that cannot apply on the device
    (CUDA-only ones on CPU) are left out of the ladder and listed under "not_applicable".
FLOPs are counted analytically from the generator's convolutions (benchmarks/flops.py, stated in the
output); images/s and TFLOP/s come from the median step time; data loading is excluded. Every
variant is built and warmed up first (--warmup steps: compilation and autotuning happen there and
are reported as first_step_s), then the timed steps run round-robin across variants.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # flops.py: only the benchmarks count FLOPs

from flops import iteration_flops_per_image  # noqa: E402  (benchmarks/flops.py)

from lfbm_dist.config import load_config  # noqa: E402
from lfbm_dist.inference import (  # noqa: E402
    GRAPHS,
    ChainRunner,
    frozen,
    graph_use,
    langevin_posterior,
    langevin_update,
    log_posterior,
)
from lfbm_dist.training.build import build_model, build_optimizer  # noqa: E402
from lfbm_dist.training.fastpath import FastPath  # noqa: E402


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # timing boundary: a deliberate host–device sync


def plain_eager_langevin(model, x, z, noise, step_size, sigma):
    """The authors' loop: fp32, all parameters trainable, grad of the summed log-posterior."""
    z = z.clone().requires_grad_(True)
    for k in range(noise.shape[1]):
        x_hat = model.generator(z)
        log_post = model.prior.log_prob(z).sum() - ((x - x_hat) ** 2).sum() / (2 * sigma**2)
        grad = torch.autograd.grad(log_post, z)[0]
        z = (z + 0.5 * step_size**2 * grad + step_size * noise[:, k]).detach().requires_grad_(True)
    return z.detach()


def per_step_compiled_langevin(model, x, chains, lv, compiled_log_posterior, autocast_dtype, cuda_graphs):
    """The earlier fast path, for the ablation only: the log-posterior compiled (one graph per step,
    its backward taken by autograd.grad), the product's update applied eagerly between graphs."""
    z = chains[:, 0].float()
    with frozen(model.generator, model.prior):
        for k in range(lv.num_steps):
            if cuda_graphs:  # the previous replay's outputs are dead: z was updated from them
                torch.compiler.cudagraph_mark_step_begin()
            z = z.detach().requires_grad_(True)
            log_post = compiled_log_posterior(model.generator, model.prior, z, x, lv.sigma, None, autocast_dtype)
            (grad,) = torch.autograd.grad(log_post.sum(), z)
            with torch.no_grad():
                z = langevin_update(z.detach(), grad, chains[:, k + 1] if lv.add_noise else None, lv.step_size)
    return z.detach()


class Variant:
    """One implementation of the iteration with its own model, optimizer and inputs.

    spec: plain (bool: the authors' loop), bf16 (bool: generator autocast), fast (FastPath or None),
    per_step (bool: fast's compile mode for the log-posterior alone: per_step_compiled_langevin),
    chain_batch (optional int, a multiple of batch: images per step, their chains run together and
    learning accumulates over micro-batches of `batch`).
    """

    def __init__(self, spec: dict, cfg, batch: int, device: torch.device):
        self.spec, self.cfg, self.device = spec, cfg, device
        self.micro_batch = batch
        self.batch = spec.get("chain_batch") or batch  # images per step
        allocated_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        torch.manual_seed(0)
        self.model = build_model(cfg).to(device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.fast: FastPath | None = spec["fast"]
        if self.fast is not None:
            self.fast.apply(self.model)
        self.autocast_dtype = torch.bfloat16 if spec["bf16"] else None
        res = cfg.data.resolution
        self.x = torch.rand(self.batch, cfg.generator.image_channels, res, res, device=device) * 2 - 1
        if self.fast is not None:
            self.x = self.fast.images(self.x)
        self.runner = (
            self.fast.runner(self.batch, self.autocast_dtype)
            if self.fast is not None
            else ChainRunner(batch=self.batch, autocast_dtype=self.autocast_dtype)
        )
        self.per_step_fn = None
        if spec.get("per_step"):  # the earlier fast path: one compiled graph per step
            self.per_step_fn = torch.compile(log_posterior, mode=self.fast.compile_mode, dynamic=False)
            self.runner = None
        self.state_bytes = (torch.cuda.memory_allocated(device) - allocated_before) if device.type == "cuda" else 0
        self.langevin_s: list[float] = []
        self.learning_s: list[float] = []
        self.step_peak_bytes = 0  # allocator peak above what was resident when the step began
        self.first_step_s = 0.0

    def step(self, timed: bool) -> None:
        cfg, device, lv = self.cfg, self.device, self.cfg.langevin
        # cuDNN autotuning is process-wide: set it for this variant (off = PyTorch's default).
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(self.fast and self.fast.cudnn_benchmark)
        chains = torch.randn(self.batch, lv.num_steps + 1, cfg.generator.nz, device=device)
        _sync(device)
        if device.type == "cuda":
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        if self.spec["plain"]:
            z = plain_eager_langevin(self.model, self.x, chains[:, 0], chains[:, 1:], lv.step_size, lv.sigma)
        elif self.per_step_fn is not None:
            cuda_graphs = graph_use(self.fast.compile_mode, device.type, False).mark_steps  # the mode's own graphs
            z = per_step_compiled_langevin(
                self.model, self.x, chains, lv, self.per_step_fn, self.autocast_dtype, cuda_graphs
            )
        else:
            z = langevin_posterior(
                self.model.generator,
                self.model.prior,
                self.x,
                num_steps=lv.num_steps,
                step_size=lv.step_size,
                sigma=lv.sigma,
                z_init=chains[:, 0],
                noise=chains[:, 1:],
                runner=self.runner,
            )
        _sync(device)
        t1 = time.perf_counter()
        micro = self.micro_batch
        for x_micro, z_micro in zip(self.x.split(micro), z.split(micro)):  # learning keeps its micro-batch
            loss, _ = self.model(x_micro, z_micro, autocast_dtype=self.autocast_dtype)
            (loss * (len(x_micro) / self.batch)).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t2 = time.perf_counter()
        if device.type == "cuda":
            self.step_peak_bytes = max(self.step_peak_bytes, torch.cuda.max_memory_allocated(device) - resident)
        if not timed:
            self.first_step_s = self.first_step_s or (t2 - t0)  # includes autotuning / compilation
            return
        self.langevin_s.append(t1 - t0)
        self.learning_s.append(t2 - t1)

    def _fast_path(self) -> str:
        if self.fast is None:
            return "none"
        described = self.fast.describe()
        if self.per_step_fn is not None:  # the product compiles the whole step; this variant the log-posterior
            described = described.replace(" (one Langevin step)", " (log-posterior only)")
        return described

    def summary(self, flops: dict[str, int]) -> dict:
        device = self.device
        step_s = statistics.median(a + b for a, b in zip(self.langevin_s, self.learning_s))
        if device.type == "cuda":
            # Own weights + optimizer state (held since set-up) + the step's working memory.
            peak, kind = self.state_bytes + self.step_peak_bytes, "CUDA allocator: own state + step peak"
        else:
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS (all variants)"
        out = {
            # Full precision: every derived figure must agree with the raw ones on any machine (a
            # 4.5 ms step rounded to 10 µs is a 0.1 % error in img/s); the docs round when they quote.
            "images_per_sec": self.batch / step_s,
            "achieved_tflops": self.batch * flops["total"] / step_s / 1e12,
            "step_s_median": step_s,
            "first_step_s": self.first_step_s,
            "langevin_share": statistics.median(self.langevin_s) / step_s,
            "learning_share": statistics.median(self.learning_s) / step_s,
            "peak_memory_bytes": int(peak),
            "peak_memory_kind": kind,
            "generator_autocast": "bfloat16" if self.spec["bf16"] else "float32",
            "fast_path": self._fast_path(),
            "chain_batch": self.batch,
            "learning_micro_batch": self.micro_batch,
            "flops_per_image": flops,
        }
        if self.runner is not None and self.runner.compile_mode and GRAPHS.fallback_reason:
            out["compile_fallback"] = GRAPHS.fallback_reason
        return out


def variants(cfg, device: torch.device, ablate: bool, chain_batch: int) -> tuple[dict[str, dict], list[str]]:
    cuda = device.type == "cuda"
    configured = FastPath.resolve(cfg.perf, device)
    out = {"lfbm_dist": {"plain": False, "bf16": cfg.train.precision == "bf16", "fast": configured}}
    skipped: list[str] = []
    if ablate:
        base = FastPath(device=device)
        tuned = replace(base, channels_last=True, cudnn_benchmark=cuda)
        step = replace(tuned, compile_mode="default", capture=cuda)  # the product's compiled chain
        ladder = [
            ("no_weight_grads+fused_update", False, base, None),
            ("+bf16_autocast", True, base, None),
            ("+channels_last", True, replace(base, channels_last=True), None),
            ("+cudnn_benchmark", True, tuned, None),
            ("+compile", True, replace(tuned, compile_mode="default"), None),
            ("+cuda_graphs", True, replace(tuned, compile_mode="reduce-overhead"), None),
            ("+compiled_step_chain", True, step, None),
            ("+large_chain_batch", True, step, chain_batch),
        ]
        for name, bf16, fast, chains in ladder:
            # CPU: no bf16 tensor cores, no cuDNN, no CUDA graphs; the rest is measurable here.
            if not cuda and name in ("+bf16_autocast", "+cudnn_benchmark", "+cuda_graphs"):
                skipped.append(name)
                continue
            per_step = name in ("+compile", "+cuda_graphs")
            out[name] = {
                "plain": False,
                "bf16": bf16 and cuda,
                "fast": fast,
                "chain_batch": chains,
                "per_step": per_step,
            }
    out["plain_eager"] = {"plain": True, "bf16": False, "fast": None}
    return out, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="preset name in configs/ (e.g. celebahq256) or a path")
    parser.add_argument("--batch-per-gpu", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (autotuning, compilation)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ablate", action="store_true", help="also time the one-change-at-a-time ladder")
    parser.add_argument("--compile", action="store_true", help="shorthand for perf.compile=on")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--chain-batch", type=int, default=0, help="the large-chain-batch variant's chains per step (default 4× batch)"
    )
    parser.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    parser.add_argument(
        "--jsonl",
        type=Path,
        help="stream: each variant runs on its own (set-up, warm-up, timed steps, freed) and its numbers are "
        "appended to this file as soon as they exist, so a run cut short keeps every finished variant",
    )
    parser.add_argument("overrides", nargs="*", help="config key=value (e.g. perf.compile=on)")
    args = parser.parse_args()
    path = Path(args.config)
    if not path.is_file():
        path = ROOT / "configs" / f"{args.config}.yaml"
    cfg = load_config(path, args.overrides + (["perf.compile=on"] if args.compile else []))
    device = torch.device(args.device)
    out = {
        "benchmark": "train_step",
        "config": path.stem,
        "batch_per_gpu": args.batch_per_gpu,
        "langevin_steps": cfg.langevin.num_steps,
        "resolution": cfg.data.resolution,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "flops_note": "2·MACs of the generator's (transposed) convolutions; Langevin step = 2F, learning = 3F",
        "variants": {},
    }
    chain_batch = args.chain_batch or 4 * args.batch_per_gpu
    if chain_batch % args.batch_per_gpu:
        parser.error(f"--chain-batch {chain_batch} must be a multiple of --batch-per-gpu {args.batch_per_gpu}")
    specs, skipped = variants(cfg, device, args.ablate, chain_batch)
    if args.skip_baseline:
        specs.pop("plain_eager")
    if args.only:
        specs = {name: specs[name] for name in args.only.split(",") if name in specs}  # in the order given
    if args.jsonl is not None:
        out["variants"] = streamed(specs, cfg, args, device)
        finish(out, skipped, device)
        return
    built = {}
    for name, spec in specs.items():  # set-up and warm-up (compilation, autotuning) one by one
        built[name] = Variant(spec, cfg, args.batch_per_gpu, device)
        for _ in range(args.warmup):
            built[name].step(timed=False)
    # Timed steps interleave the variants, in a rotating order, so that drifting machine load
    # (shared VMs, GPU clocks) is spread evenly instead of landing on whichever variant ran last.
    names = list(built)
    for round_index in range(args.steps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            built[name].step(timed=True)
    # One FLOP count for all variants: they run the same generator (compile wraps the log-posterior).
    flops = iteration_flops_per_image(built[names[0]].model.generator, cfg.generator.nz, cfg.langevin.num_steps)
    for name in names:
        out["variants"][name] = built[name].summary(flops)
        out["variants"][name]["first_step_note"] = "includes compilation / CUDA-graph capture / autotuning"
    finish(out, skipped, device)


def streamed(specs: dict, cfg, args, device: torch.device) -> dict[str, dict]:
    """Variant by variant, each written to args.jsonl when its warm-up (compile) ends and when it is timed."""

    def emit(record: dict) -> None:
        with args.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")

    results = {}
    for name, spec in specs.items():
        variant = Variant(spec, cfg, args.batch_per_gpu, device)
        for _ in range(args.warmup):
            variant.step(timed=False)
        emit({"variant": name, "phase": "warmed_up", "first_step_s": variant.first_step_s})
        for _ in range(args.steps):
            variant.step(timed=True)
        flops = iteration_flops_per_image(variant.model.generator, cfg.generator.nz, cfg.langevin.num_steps)
        results[name] = variant.summary(flops)
        results[name]["first_step_note"] = "includes compilation / CUDA-graph capture / autotuning"
        emit({"variant": name, "phase": "measured", **results[name]})
        del variant  # its memory back before the next variant (peak memory is per variant)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def finish(out: dict, skipped: list[str], device: torch.device) -> None:
    if skipped:
        out["not_applicable"] = {name: f"needs CUDA (device is {device.type})" for name in skipped}
    if "plain_eager" in out["variants"]:
        base = out["variants"]["plain_eager"]["images_per_sec"]
        out["speedup_vs_plain_eager"] = {
            name: v["images_per_sec"] / base for name, v in out["variants"].items() if name != "plain_eager"
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
