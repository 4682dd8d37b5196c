"""Fixed N(0, I) prior: the ABP baseline (Han et al. 2017). No parameters to learn."""

from __future__ import annotations

import torch
from torch import nn

from .flow_prior import standard_normal_log_prob


class GaussianPrior(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        # A buffer only so that .to(device) moves something we can read the device from.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I). (B, d) -> (B,)"""
        return standard_normal_log_prob(z.float().reshape(z.shape[0], -1))

    normalized = True
    loss_noise_shape = None

    @property
    def sample_noise_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @torch.no_grad()
    def sample_from_noise(self, z0: torch.Tensor) -> torch.Tensor:
        return z0.to(self._anchor.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample_from_noise(torch.randn(n, self.dim, generator=generator, device=self._anchor.device))

    def prior_loss(self, z_posterior: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Nothing to learn; a zero that still lives on the right device."""
        return z_posterior.new_zeros(())
