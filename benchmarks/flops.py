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

from torch import nn

from lfbm_dist.training.workload import generator_forward_flops  # the cost model lfbm-evaluate counts with


def iteration_flops_per_image(generator: nn.Module, nz: int, num_langevin_steps: int) -> dict[str, int]:
    forward = generator_forward_flops(generator, nz)
    return {
        "generator_forward": forward,
        "langevin": num_langevin_steps * 2 * forward,
        "learning": 3 * forward,
        "total": (2 * num_langevin_steps + 3) * forward,
    }
