"""LFBM = generator g_β + prior p_α in one module, with Algorithm 1's learning loss.

One module and one optimizer with two parameter groups is exactly the paper's two Adams
(Adam is per-parameter), and it is what Accelerate's DeepSpeed path needs (it prepares ONE
model). The learning loss sums two terms on disjoint parameters, so one backward gives
each network its own gradient:

    loss = mean_i ‖m_i ⊙ (x_i − g_β(z_i))‖² / (2σ²)      -> ∇β = −Eq. 7 (batch mean)
         + prior_loss(z)                                -> flow: ∇α = −Eq. 6 (batch mean)
"""

from __future__ import annotations

import torch
from torch import nn

from ..inference.likelihood import gaussian_energy, squared_error
from .ebm_prior import EBMPrior
from .flow_prior import FlowPrior, standard_normal_log_prob
from .gaussian_prior import GaussianPrior

Prior = FlowPrior | GaussianPrior | EBMPrior  # one interface: log_prob, prior_loss, sample_from_noise, …


class LFBM(nn.Module):
    def __init__(self, generator: nn.Module, prior: Prior, sigma: float, encoder: nn.Module | None = None):
        super().__init__()
        self.generator = generator
        self.prior = prior
        self.sigma = sigma
        self.encoder = encoder  # LFBM-VAE baseline only: amortised posterior q(z|x)

    @property
    def nz(self) -> int:
        return self.generator.nz

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        autocast_dtype: torch.dtype | None = None,
        prior_noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The learning step's loss on inferred latents z (detached). Returns (loss, stats).

        LFBM-VAE baseline (self.encoder set): `z` is the reparameterisation noise ε instead, and the
        loss is the negative ELBO  ‖x − g(z)‖²/(2σ²) − log p_α(z) + log q(z|x),  z ~ q(z|x).
        """
        if self.encoder is not None:
            return self._negative_elbo(x, z, autocast_dtype)
        z = z.detach()
        with torch.autocast(
            device_type=x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            x_hat = self.generator(z)
        sq_err = squared_error(x, x_hat, mask)  # (B,)
        loss_generator = gaussian_energy(sq_err.mean(), self.sigma)
        loss_prior = self.prior.prior_loss(z, noise=prior_noise)  # prior_noise: the EBM's negative chains
        with torch.no_grad():
            visible = mask.expand_as(x).flatten(1).sum(1).clamp_min(1) if mask is not None else x[0].numel()
            stats = {
                "loss/generator": loss_generator.detach(),
                "loss/prior": loss_prior.detach(),
                "recon_mse": (sq_err / visible).mean(),  # per visible pixel, on the [−1, 1] scale
                # mean log p_α(z) of the inferred latents (unnormalised for the EBM prior)
                "log_p_z": self.prior.log_prob(z).mean(),
                # the same latents under N(0, I): the aggregated-posterior diagnostic's other half
                "log_p_z_standard_normal": standard_normal_log_prob(z.float()).mean(),
            }
            if mask is not None:  # learning from occluded data (§4.6): how well the hidden pixels are recovered
                hidden = (1 - mask).expand_as(x)
                hidden_err = ((x_hat.float() - x.float()) / 2).pow(2) * hidden  # [0, 1] scale, as Table 5
                stats["recovery_mse"] = hidden_err.sum() / hidden.sum().clamp_min(1)
        return loss_generator + loss_prior, stats

    def _negative_elbo(
        self, x: torch.Tensor, eps: torch.Tensor, autocast_dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, log_q = self.encoder(x, eps)
        with torch.autocast(
            device_type=x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            x_hat = self.generator(z)
        sq_err = squared_error(x, x_hat)  # (B,)
        log_p_z = self.prior.log_prob(z)
        loss_generator = gaussian_energy(sq_err.mean(), self.sigma)
        loss_prior = -log_p_z.mean()
        kl_term = log_q.mean() + loss_prior  # E_q[log q − log p_α]
        with torch.no_grad():
            stats = {
                "loss/generator": loss_generator.detach(),
                "loss/prior": loss_prior.detach(),
                "loss/kl": kl_term.detach(),
                "recon_mse": (sq_err / x[0].numel()).mean(),
            }
        return loss_generator + loss_prior + log_q.mean(), stats
