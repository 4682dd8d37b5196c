"""Index-seeded sampling and inference helpers shared by the metrics (world-size independent)."""
from __future__ import annotations

import torch

from ..inference import langevin_posterior
from ..models import LFBM, EBMPrior, FlowPrior
from ..seeding import normal_rows, text_seed


def seeded_normal(tag: str, seed: int, indices: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) normals, row i a function of (tag, seed, indices[i]) only."""
    return normal_rows([text_seed(tag, seed, index) for index in indices], shape)


@torch.no_grad()
def sample_images(model: LFBM, indices: list[int], seed: int, device: torch.device) -> torch.Tensor:
    """Ancestral samples x = g(f(z0)) for global sample indices; (B, C, R, R) in [−1, 1]."""
    prior = model.prior
    if isinstance(prior, EBMPrior):  # LEBM: short-run prior MCMC, chains seeded per index
        chain = seeded_normal("sample-ebm", seed, indices, (prior.langevin_steps + 1, model.nz)).to(device)
        with torch.enable_grad():
            z = prior.sample(len(indices), chain_noise=chain)
    else:
        z0 = seeded_normal("sample", seed, indices, (model.nz,)).to(device)
        z = prior.from_base(z0) if isinstance(prior, FlowPrior) else z0
    return model.generator(z)


def infer(model: LFBM, x: torch.Tensor, indices: list[int], seed: int, num_steps: int, step_size: float,
          mask: torch.Tensor | None = None, tag: str = "infer", add_noise: bool = True) -> torch.Tensor:
    """Posterior inference with a per-index chain start (and noise, unless add_noise=False:
    then the chain is noise-free gradient ascent from its random start)."""
    rows = num_steps + 1 if add_noise else 1
    chains = seeded_normal(tag, seed, indices, (rows, model.nz)).to(x.device)
    return langevin_posterior(model.generator, model.prior, x, num_steps=num_steps, step_size=step_size,
                              sigma=model.sigma, mask=mask, z_init=chains[:, 0], add_noise=add_noise,
                              noise=chains[:, 1:] if add_noise else None)
