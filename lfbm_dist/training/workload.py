"""What an evaluation costs, said before it runs: the work counted per metric (images × chains × steps ×
the generator's FLOPs, the cost model benchmarks/flops.py reports), divided by rates measured on this
machine on one batch of the evaluation's own work (one eager Langevin batch, one batch of prior samples,
one Inception batch). An area-only guess was 4× off on MNIST inpainting (issue 44); counting the work
and timing the machine is what keeps the estimate within 2× of the measured time (docs/PERFORMANCE.md).

Pure torch: the suite calls it with its own model, data and FID network."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# InceptionV3 at 299×299: 5.71 G multiply-accumulates (torchvision's model card), FLOPs = 2 × MACs.
# Only a unit: the FID network's rate is timed, so the estimate does not depend on this figure.
INCEPTION_FLOPS = 2 * 5_713_000_000
INCEPTION_BATCH = 16  # images the FID network's rate is timed on


def forward_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of `module` on `inputs` (convolutions, transposed convolutions and
    linear layers; 2 × multiply-accumulates), counted by running the real module."""
    total = 0

    def hook(m: nn.Module, args, output) -> None:
        nonlocal total
        if isinstance(m, nn.ConvTranspose2d):  # each input pixel scatters a k×k×C_out patch
            k = m.kernel_size[0] * m.kernel_size[1]
            total += 2 * m.in_channels * m.out_channels // m.groups * k * args[0].shape[-2] * args[0].shape[-1]
        elif isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += 2 * m.in_channels // m.groups * m.out_channels * k * output.shape[-2] * output.shape[-1]
        elif isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features * (output.numel() // m.out_features)

    kinds = (nn.ConvTranspose2d, nn.Conv2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, kinds)]
    was_training = module.training
    try:
        with torch.no_grad():  # eval: BatchNorm cannot take a batch of one in training mode
            module.eval()(*inputs)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total


def generator_forward_flops(generator: nn.Module, nz: int) -> int:
    """FLOPs of one generator forward pass for ONE image."""
    return forward_flops(generator, torch.zeros(1, nz, device=next(generator.parameters()).device))


@dataclass
class Work:
    """What is left to do, in units whose cost is timed: posterior Langevin sample-steps (each ≈ 2
    generator passes: forward and input gradient), prior samples (one generator pass, plus the prior's
    chain for an EBM prior) and Inception images."""

    chain_steps: int = 0
    samples: int = 0
    inception_images: int = 0
    chain_images: int = 0  # the most images one chain metric infers (its batches are at most this)

    def chains(self, images: int, steps: int) -> None:
        self.chain_steps += images * steps
        self.chain_images = max(self.chain_images, images)


def count(cfg, metrics: list[str], split_size: Callable[[str, int], int], extra_fids: int = 0) -> Work:
    """The work of `metrics` on all ranks; split_size(split, limit) is how many images a split gives."""
    e, lv = cfg.eval, cfg.langevin
    w = Work()
    fids = extra_fids + ("fid" in metrics)
    w.samples += fids * e.fid_num_samples + ("digits" in metrics) * e.fid_num_samples
    w.inception_images += fids * e.fid_num_samples
    if "recon" in metrics:
        w.chains(split_size(e.split, e.recon_samples), lv.test_num_steps)
    if "inpaint" in metrics:
        n = split_size(e.split, e.inpaint_samples)
        w.chains(n, e.inpaint_completions * lv.test_num_steps)
        w.inception_images += n if e.inpaint_quality == "fid" else 0
    if "anomaly" in metrics:
        w.chains(split_size("test", 0), lv.test_num_steps)
    if "aggpost" in metrics:
        w.chains(split_size("train", e.recon_samples), lv.num_steps)
    if "recovery" in metrics:
        w.chains(split_size("train", e.recon_samples), lv.test_num_steps)
    return w


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # host–device sync: timing only, before the evaluation starts
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of Work on this machine, from one timed batch of each."""

    chain_step: float = 0.0
    sample: float = 0.0
    inception_image: float = 0.0


def calibrate(
    work: Work, device: torch.device, batch: int, chain_batch=None, sample_batch=None, inception_batch=None
) -> Rates:
    """Each *_batch(n, steps) runs n units of its kind (Langevin steps on n images, n prior samples, n
    Inception images); each kind the work needs is run once untimed (first-call costs) and once timed, on
    the evaluation's own batch size (per-image costs fall with the batch: 0.83 ms per MNIST sample-step
    at 32 against 0.55 at 100 on 2 CPU cores) — except the Inception network, whose cost per image does
    not (99–155 ms per image at batches of 4 to 100 on 2 CPU cores), timed on INCEPTION_BATCH images
    after a first call on 2: on CPU a batch of 100 would add ≈ 25 s to every evaluation."""

    def per_unit(run, needed: int, steps: int = 1, cap: int | None = None) -> float:
        if not needed or run is None:
            return 0.0
        n = min(batch, needed, cap or batch)
        run(n if cap is None else min(n, 2), 1)
        return _timed(lambda: run(n, steps), device) / (n * steps)

    return Rates(
        chain_step=per_unit(chain_batch, work.chain_images, steps=2),
        sample=per_unit(sample_batch, work.samples),
        inception_image=per_unit(inception_batch, work.inception_images, cap=INCEPTION_BATCH),
    )


def describe(work: Work, rates: Rates, world: int, generator_flops: int) -> tuple[float, str]:
    """(seconds, one line): the estimate and the work and rates behind it."""
    seconds = work.chain_steps * rates.chain_step + work.samples * rates.sample
    seconds = (seconds + work.inception_images * rates.inception_image) / world
    gen_flops = (2 * work.chain_steps + work.samples) * generator_flops
    parts = [f"{work.chain_steps:,} Langevin sample-steps", f"{work.samples:,} samples"]
    parts.append(f"{work.inception_images:,} Inception images")
    rate = f"{2 * generator_flops / rates.chain_step / 1e9:.1f} GFLOP/s" if rates.chain_step else "—"
    line = (
        f"≈ {_duration(seconds)} on {world} rank(s): {', '.join(parts)} ({gen_flops / 1e12:.3g} TFLOP of "
        f"generator work and {work.inception_images * INCEPTION_FLOPS / 1e12:.3g} of Inception; Langevin at "
        f"{rate}, timed on one batch here)"
    )
    return seconds, line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ({seconds:.0f} s)"
    return f"{seconds / 3600:.1f} h"
