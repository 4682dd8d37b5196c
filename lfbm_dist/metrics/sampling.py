"""Index-seeded sampling and inference helpers shared by the metrics (world-size independent)."""

from __future__ import annotations

import torch

from ..inference import EAGER, ChainRunner, langevin_posterior
from ..models import LFBM
from ..seeding import Tag, normal_rows, text_seed


def seeded_normal(tag: str, seed: int, indices: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) normals, row i a function of (tag, seed, indices[i]) only."""
    return normal_rows([text_seed(tag, seed, index) for index in indices], shape)


@torch.no_grad()
def sample_images(model: LFBM, indices: list[int], seed: int, device: torch.device) -> torch.Tensor:
    """Ancestral samples x = g(z), z from the prior driven by per-index noise; (B, C, R, R) in [−1, 1].
    (For the EBM prior the noise drives a short-run prior chain: an MCMC sample, not an exact one.)"""
    prior = model.prior
    noise = seeded_normal(Tag.SAMPLE, seed, indices, tuple(prior.sample_noise_shape)).to(device)
    return model.generator(prior.sample_from_noise(noise))


def infer(
    model: LFBM,
    x: torch.Tensor,
    indices: list[int],
    seed: int,
    num_steps: int,
    step_size: float,
    mask: torch.Tensor | None = None,
    tag: str = "infer",
    add_noise: bool = True,
    chain: ChainRunner = EAGER,
) -> torch.Tensor:
    """Posterior inference with a per-index chain start (and noise, unless add_noise=False:
    then the chain is noise-free gradient ascent from its random start). `chain`: how the chains run
    (the fast path's compiled whole chain and chain batch; same math, lfbm_dist/inference/chain.py)."""
    rows = num_steps + 1 if add_noise else 1
    chains = seeded_normal(tag, seed, indices, (rows, model.nz)).to(x.device)
    return langevin_posterior(
        model.generator,
        model.prior,
        x,
        num_steps=num_steps,
        step_size=step_size,
        sigma=model.sigma,
        mask=mask,
        z_init=chains[:, 0],
        add_noise=add_noise,
        noise=chains[:, 1:] if add_noise else None,
        runner=chain,
    )
