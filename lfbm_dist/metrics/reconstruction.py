"""Reconstruction MSE with long-run test-time inference (Table 2; Table 9: 400 / 800 steps).

x̂ = g(z), z from `langevin.test_num_steps` posterior Langevin steps started at N(0, I). Reported per
pixel on [0, 1] (`recon_mse`, the scale of the paper's Table 2 numbers, e.g. 0.011 on CelebA) and on
the model's [−1, 1] range (`recon_mse_pm1` = 4 × recon_mse).
"""

from __future__ import annotations

import torch

from ..collectives import SINGLE_PROCESS, Collectives
from ..inference import EAGER, ChainRunner
from ..progress import NO_PROGRESS, Progress
from ..seeding import Tag
from .sampling import infer


def reconstruction_mse(
    model,
    batches,
    seed: int,
    num_steps: int,
    step_size: float,
    comm: Collectives = SINGLE_PROCESS,
    progress: Progress = NO_PROGRESS,
    chain: ChainRunner = EAGER,
) -> dict:
    """batches: iterable of (x in [−1, 1] on device, global indices) already split by rank."""
    sums = torch.zeros(3, dtype=torch.float64)  # Σ squared error, Σ elements, images
    for x, indices in batches:
        z = infer(model, x, indices, seed, num_steps, step_size, tag=Tag.RECON, chain=chain)
        with torch.no_grad():
            err = (model.generator(z).float() - x.float()).pow(2)
        sums += torch.tensor([err.sum().item(), err.numel(), len(x)], dtype=torch.float64)  # host sync per batch
        progress.update(len(x) * comm.world_size)
    sums = comm.all_reduce_sum(sums)
    mse_pm1 = float(sums[0] / sums[1])
    return {
        "recon_mse": mse_pm1 / 4.0,
        "recon_mse_pm1": mse_pm1,
        "recon_images": int(sums[2]),
        "recon_langevin_steps": num_steps,
    }
