"""How a training batch's latents are inferred, behind one interface: short-run posterior Langevin
(LFBM-MCMC, and the ABP / LEBM baselines, whatever the prior) or the amortised encoder of the
LFBM-VAE baseline. Each variant says how much per-sample randomness it needs; the trainer draws it
from the (seed, step, sample index) streams, so every variant is world-size independent."""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import Config
from ..data.feeds import Batch
from ..inference import langevin_posterior
from ..models import LFBM
from .fastpath import FastPath


class LatentInference(Protocol):
    def noise_shape(self, nz: int) -> tuple[int, ...]:
        """Per-sample randomness the variant consumes (drawn from seeding.Stream.LANGEVIN)."""

    def infer(self, plain: LFBM, batch: Batch, noise: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(what the learning step takes as `latents`, device-tensor stats): no host sync."""


class LangevinInference:
    """K steps of Eq. 8 from N(0, I); noise row 0 is the chain start, rows 1..K the step noise."""

    def __init__(self, cfg: Config, fast: FastPath, autocast_dtype: torch.dtype | None):
        self.lv, self.fast, self.autocast_dtype = cfg.langevin, fast, autocast_dtype

    def noise_shape(self, nz: int) -> tuple[int, ...]:
        return (self.lv.num_steps + 1, nz)

    def infer(self, plain: LFBM, batch: Batch, noise: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lv = self.lv
        return langevin_posterior(
            plain.generator,
            plain.prior,
            batch.x,
            num_steps=lv.num_steps,
            step_size=lv.step_size,
            sigma=lv.sigma,
            mask=batch.mask,
            z_init=noise[:, 0],
            noise=noise[:, 1:],
            add_noise=lv.add_noise,
            autocast_dtype=self.autocast_dtype,
            log_posterior_fn=self.fast.log_posterior,
            return_stats=True,
        )


class AmortizedInference:
    """LFBM-VAE: the encoder's q(z | x) is sampled inside the learning step (it is trained there, by the
    negative ELBO), so inference only hands over the reparameterisation noise ε."""

    def noise_shape(self, nz: int) -> tuple[int, ...]:
        return (nz,)

    def infer(self, plain: LFBM, batch: Batch, noise: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return noise, {}


def latent_inference(cfg: Config, fast: FastPath, autocast_dtype: torch.dtype | None) -> LatentInference:
    return AmortizedInference() if cfg.inference.kind == "vae" else LangevinInference(cfg, fast, autocast_dtype)
