"""Reconstruction MSE with long-run test-time inference (Table 2; Table 9: 400 / 800 steps).

x̂ = g(z), z from `langevin.test_num_steps` posterior Langevin steps started at N(0, I). Reported per
pixel on [0, 1] (`recon_mse`, the scale of the paper's Table 2 numbers, e.g. 0.011 on CelebA) and on
the model's [−1, 1] range (`recon_mse_pm1` = 4 × recon_mse).
"""
from __future__ import annotations

import torch

from .. import dist
from .sampling import infer


def reconstruction_mse(model, batches, seed: int, num_steps: int, step_size: float) -> dict:
    """batches: iterable of (x in [−1, 1] on device, global indices) already split by rank."""
    sq_sum = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    for x, indices in batches:
        z = infer(model, x, indices, seed, num_steps, step_size, tag="recon")
        with torch.no_grad():
            err = (model.generator(z).float() - x.float()).pow(2)
        sq_sum += err.sum().double().cpu()
        count += err.numel()
    totals = dist.all_reduce_sum(torch.stack([sq_sum, count]))
    mse_pm1 = float(totals[0] / totals[1])
    return {"recon_mse": mse_pm1 / 4.0, "recon_mse_pm1": mse_pm1, "recon_images": int(totals[1]) // x[0].numel(),
            "recon_langevin_steps": num_steps}
