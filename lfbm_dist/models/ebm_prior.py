"""Latent energy-based prior: the LEBM baseline (Pang et al. 2020, paper Eq. 12).

p_α(z) ∝ exp(f_α(z)) · N(z; 0, I), f_α an MLP. The normaliser is intractable, so
`log_prob` returns the *unnormalised* log-density (its z-gradient is exact, which is all
posterior Langevin needs), and `sample` runs short-run prior Langevin MCMC from N(0, I):
it is an approximate sampler, biased by the second KL term of Eq. 12.
"""

from __future__ import annotations

import torch
from torch import nn

from .flow_prior import standard_normal_log_prob


class EBMPrior(nn.Module):
    def __init__(
        self, dim: int, hidden: int = 200, langevin_steps: int = 60, langevin_step_size: float = 0.4, leak: float = 0.2
    ):
        super().__init__()
        if langevin_steps < 1 or langevin_step_size <= 0:
            raise ValueError("EBMPrior needs langevin_steps >= 1 and langevin_step_size > 0")
        self.dim = dim
        self.langevin_steps = langevin_steps
        self.langevin_step_size = langevin_step_size
        self.energy_net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.LeakyReLU(leak),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(leak),
            nn.Linear(hidden, 1),
        )

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """f_α(z), the negative energy. (B, d) -> (B,)"""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.energy_net(z.float().reshape(z.shape[0], -1)).squeeze(-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p_α(z) = f_α(z) + log N(z; 0, I). (B, d) -> (B,)"""
        return self.score(z) + standard_normal_log_prob(z.float().reshape(z.shape[0], -1))

    normalized = False  # log_prob is unnormalised: comparable between images, not in nats

    @property
    def sample_noise_shape(self) -> tuple[int, ...]:
        """A prior sample is a short-run chain: its start (row 0) and per-step noise (rows 1..K)."""
        return (self.langevin_steps + 1, self.dim)

    loss_noise_shape = sample_noise_shape  # the learning step's negative samples are such chains too

    def sample_from_noise(self, chain_noise: torch.Tensor) -> torch.Tensor:
        """Short-run prior Langevin (MCMC, not exact) driven by chain_noise (n, K + 1, d)."""
        from ..inference.langevin import langevin_prior  # local: models must not need inference at import

        chain_noise = chain_noise.to(self.energy_net[0].weight.device)
        with torch.enable_grad():  # the chain follows ∇f even where the caller is in no_grad
            return langevin_prior(
                self,
                chain_noise[:, 0],
                num_steps=self.langevin_steps,
                step_size=self.langevin_step_size,
                noise=chain_noise[:, 1:],
            )

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.energy_net[0].weight.device
        return self.sample_from_noise(torch.randn(n, *self.sample_noise_shape, generator=generator, device=device))

    def prior_loss(self, z_posterior: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Contrastive MLE loss: E_{prior MCMC}[f] − E_{posterior}[f] (its gradient is −∇_α log-lik).
        noise: the negative chains' randomness (n, K + 1, d); drawn here if not given."""
        n = z_posterior.shape[0]
        z_negative = (self.sample(n) if noise is None else self.sample_from_noise(noise)).detach()
        return self.score(z_negative).mean() - self.score(z_posterior.detach()).mean()
