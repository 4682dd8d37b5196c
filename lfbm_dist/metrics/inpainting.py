"""Supervised inpainting (§4.3, Table 3): infer z from the visible pixels only (masked likelihood),
complete the hole with g(z). Several completions per image from different chain initialisations.
MSE is per occluded pixel on [0, 1]; FID is of the completed images (first completion).
"""

from __future__ import annotations

import torch

from ..collectives import SINGLE_PROCESS, Collectives
from ..data.masks import make_mask
from ..inference import EAGER, ChainRunner
from ..progress import NO_PROGRESS, Progress
from ..seeding import Tag
from .sampling import infer


def inpaint(
    model,
    x: torch.Tensor,
    mask: torch.Tensor,
    indices: list[int],
    seed: int,
    num_steps: int,
    step_size: float,
    completion: int,
    chain: ChainRunner = EAGER,
) -> torch.Tensor:
    """Completed images m ⊙ x + (1 − m) ⊙ g(z); mask (B, 1, R, R) float, 1 = visible."""
    z = infer(model, x, indices, seed, num_steps, step_size, mask=mask, tag=f"{Tag.INPAINT}-{completion}", chain=chain)
    with torch.no_grad():
        return mask * x + (1 - mask) * model.generator(z).float()


def inpainting_metrics(
    model,
    batches,
    seed: int,
    num_steps: int,
    step_size: float,
    completions: int,
    mask_spec: str = "center",
    on_completed=None,
    comm: Collectives = SINGLE_PROCESS,
    progress: Progress = NO_PROGRESS,
    chain: ChainRunner = EAGER,
) -> dict:
    sums = torch.zeros(2, dtype=torch.float64)  # Σ squared error in the holes, Σ hole pixels
    for x, indices in batches:
        res = x.shape[-1]
        mask = torch.stack([make_mask(mask_spec, res, str(i), seed) for i in indices]).float().to(x.device)
        for c in range(completions):
            done = inpaint(model, x, mask, indices, seed, num_steps, step_size, c, chain)
            hole = (1 - mask).expand_as(x)
            sums += torch.stack(
                [
                    (((done - x) / 2) ** 2 * hole).sum().double().cpu(),  # /2: [−1, 1] -> [0, 1]
                    hole.sum().double().cpu(),
                ]
            )
            if on_completed is not None:
                on_completed(c, x, mask, done)
        progress.update(len(x) * comm.world_size)
    sums = comm.all_reduce_sum(sums)
    return {"inpaint_mse": float(sums[0] / sums[1]), "inpaint_completions": completions, "inpaint_mask": mask_spec}
