"""Supervised inpainting (§4.3, Table 3): infer z from the visible pixels only (masked likelihood),
complete the hole with g(z). Several completions per image from different chain initialisations.
MSE is per occluded pixel on [0, 1]; FID is of the completed images (first completion).
"""
from __future__ import annotations

import torch

from .. import dist
from ..data.masks import make_mask
from .sampling import infer


def inpaint(model, x: torch.Tensor, mask: torch.Tensor, indices: list[int], seed: int, num_steps: int,
            step_size: float, completion: int) -> torch.Tensor:
    """Completed images m ⊙ x + (1 − m) ⊙ g(z); mask (B, 1, R, R) float, 1 = visible."""
    z = infer(model, x, indices, seed, num_steps, step_size, mask=mask, tag=f"inpaint-{completion}")
    with torch.no_grad():
        return mask * x + (1 - mask) * model.generator(z).float()


def inpainting_metrics(model, batches, seed: int, num_steps: int, step_size: float, completions: int,
                       mask_spec: str = "center", on_completed=None) -> dict:
    sq_sum = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    for x, indices in batches:
        res = x.shape[-1]
        mask = torch.stack([make_mask(mask_spec, res, str(i), seed) for i in indices]).float().to(x.device)
        for c in range(completions):
            done = inpaint(model, x, mask, indices, seed, num_steps, step_size, c)
            hole = (1 - mask).expand_as(x)
            sq_sum += (((done - x) / 2) ** 2 * hole).sum().double().cpu()  # /2: [−1, 1] -> [0, 1] scale
            count += hole.sum().double().cpu()
            if on_completed is not None:
                on_completed(c, x, mask, done)
    totals = dist.all_reduce_sum(torch.stack([sq_sum, count]))
    return {"inpaint_mse": float(totals[0] / totals[1]), "inpaint_completions": completions,
            "inpaint_mask": mask_spec}
