"""Analytic FLOP counts of one LFBM training iteration, from the generator's convolutions.

A ConvTranspose2d with C_in -> C_out channels, kernel k, on an H×W input costs C_in·C_out·k²·H·W
multiply-accumulates (each input pixel scatters a k×k×C_out patch); FLOPs = 2 × MACs.

Per image, with F = generator forward FLOPs and K Langevin steps:
    Langevin step   = forward + gradient w.r.t. the input (no weight gradients)   ≈ 2F
    learning step   = forward + input gradient + weight gradient                  ≈ 3F
    iteration       = K · 2F + 3F
Excluded (small at 256²): the flow prior (≈ 0.6 M MACs per pass), activations, the update itself.
"""

from __future__ import annotations

import torch
from torch import nn


def generator_forward_flops(generator: nn.Module, nz: int) -> int:
    """FLOPs of one forward pass for ONE image, by running shapes through the real module."""
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            x = inputs[0]
            k_h, k_w = module.kernel_size
            total += (
                2 * module.in_channels * module.out_channels // module.groups * k_h * k_w * x.shape[-2] * x.shape[-1]
            )
        elif isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            total += (
                2
                * module.in_channels
                // module.groups
                * module.out_channels
                * k_h
                * k_w
                * output.shape[-2]
                * output.shape[-1]
            )
        elif isinstance(module, nn.Linear):  # the mnist28 generator's fully-connected layers
            total += 2 * module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in generator.modules()
        if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d, nn.Linear))
    ]
    was_training = generator.training
    try:
        with torch.no_grad():  # eval: BatchNorm cannot take a batch of one in training mode
            generator.eval()(torch.zeros(1, nz, device=next(generator.parameters()).device))
    finally:
        generator.train(was_training)
        for h in handles:
            h.remove()
    return total


def iteration_flops_per_image(generator: nn.Module, nz: int, num_langevin_steps: int) -> dict[str, int]:
    forward = generator_forward_flops(generator, nz)
    return {
        "generator_forward": forward,
        "langevin": num_langevin_steps * 2 * forward,
        "learning": 3 * forward,
        "total": (2 * num_langevin_steps + 3) * forward,
    }
