"""Short-run Langevin inference (paper Eq. 8) for the posterior p(z | x) and, for the
LEBM baseline, the EBM prior.

Step convention (the official code's, used everywhere in lfbm_dist):

    z ← z + ½ s² ∇_z log p(z | x) + s ε,     ε ~ N(0, I),   step_size = s (default 0.1)

which is Eq. 8 with ξ = s² / 2 (so √(2ξ) = s). A paper-style ξ converts as s = √(2ξ).

    log p(z | x) = log p_α(z) − ‖m ⊙ (x − g_β(z))‖² / (2σ²) + const            (Eq. 8, §4.3)

with m the visibility mask (1 = observed) for inpainting / learning from occluded data.

No weight gradients are ever computed here: every parameter of the generator and the
prior has requires_grad switched off for the duration of the chain (and restored after),
and gradients are taken with torch.autograd.grad w.r.t. z only, so `.grad` is untouched.
This is also what keeps inference free of collective communication under DDP: call it
with the plain (unwrapped) modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn


class Prior(Protocol):
    def log_prob(self, z: torch.Tensor) -> torch.Tensor: ...


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Switch off requires_grad on every parameter (restoring each flag afterwards)."""
    params = [p for m in modules if isinstance(m, nn.Module) for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def log_likelihood(
    generator: nn.Module,
    z: torch.Tensor,
    x: torch.Tensor,
    sigma: float,
    mask: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """log p_β(x | z) up to its constant: −‖m ⊙ (x − g(z))‖² / (2σ²). Returns (B,) float32."""
    with torch.autocast(
        device_type=z.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        x_hat = generator(z)
    residual = x.float() - x_hat.float()  # (B, C, H, W); the sum is done in float32
    if mask is not None:
        residual = residual * mask
    return -residual.pow(2).flatten(1).sum(1) / (2.0 * sigma**2)


def log_posterior(
    generator: nn.Module,
    prior: Prior,
    z: torch.Tensor,
    x: torch.Tensor,
    sigma: float,
    mask: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """log p(z | x) up to its constant, (B,) float32. A plain function of tensors and modules, so it
    can be handed to torch.compile as it is (lfbm_dist/fastpath.py): forward and backward compile."""
    return prior.log_prob(z) + log_likelihood(generator, z, x, sigma, mask, autocast_dtype)


LogPosteriorFn = Callable[..., torch.Tensor]  # same signature as log_posterior


def _langevin_update(
    z: torch.Tensor, grad: torch.Tensor, eps: torch.Tensor | None, half_s2: float, step_size: float
) -> torch.Tensor:
    """z + ½s²∇ + sε as two fused multiply-adds (out-of-place first: z may be a caller's tensor)."""
    z = torch.add(z, grad, alpha=half_s2)
    return z.add_(eps, alpha=step_size) if eps is not None else z


def _check_noise(noise: torch.Tensor | None, batch: int, num_steps: int, dim: int) -> None:
    if noise is not None and tuple(noise.shape) != (batch, num_steps, dim):
        raise ValueError(f"noise must have shape {(batch, num_steps, dim)}, got {tuple(noise.shape)}")


def langevin_posterior(
    generator: nn.Module,
    prior: Prior,
    x: torch.Tensor,
    *,
    num_steps: int,
    step_size: float,
    sigma: float,
    mask: torch.Tensor | None = None,
    z_init: torch.Tensor | None = None,
    add_noise: bool = True,
    noise: torch.Tensor | None = None,
    rng: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    log_posterior_fn: LogPosteriorFn | None = None,
    return_stats: bool = False,
):
    """K steps of Eq. 8 on log p(z | x); chains start at z_init, else at N(0, I).

    x: (B, C, H, W) in the generator's range; mask: broadcastable to x, 1 = visible.
    noise: optional (B, K, nz) pre-drawn ε (the trainer derives it from per-sample seeds so that
    a global batch gives the same chains on any number of ranks); else drawn from `rng`.
    log_posterior_fn: a drop-in for `log_posterior` (e.g. its torch.compile'd form); same math.
    Returns z (B, nz) detached, and with return_stats a dict of device tensors (no host sync).
    """
    if num_steps < 0 or step_size <= 0 or sigma <= 0:
        raise ValueError(f"need num_steps >= 0, step_size > 0, sigma > 0; got {num_steps}, {step_size}, {sigma}")
    batch, nz = x.shape[0], generator.nz
    if z_init is None:
        z_init = torch.randn(batch, nz, generator=rng, device=x.device)
    _check_noise(noise if add_noise else None, batch, num_steps, nz)
    z = z_init.detach().float().clone()
    half_s2 = 0.5 * step_size**2
    grad_norm = z.new_zeros(())
    log_post_fn = log_posterior_fn or log_posterior
    with frozen(generator, prior if isinstance(prior, nn.Module) else None):
        for k in range(num_steps):
            z.requires_grad_(True)
            log_post = log_post_fn(generator, prior, z, x, sigma, mask, autocast_dtype)
            # Chains are independent, so the gradient of the sum is each chain's own gradient.
            (grad,) = torch.autograd.grad(log_post.sum(), z)
            with torch.no_grad():
                eps = None
                if add_noise:
                    eps = noise[:, k] if noise is not None else torch.randn(z.shape, generator=rng, device=z.device)
                z = _langevin_update(z.detach(), grad, eps, half_s2, step_size)
            if return_stats and k == num_steps - 1:
                grad_norm = grad.detach().norm(dim=1).mean()
    z = z.detach()
    if return_stats:
        return z, {"langevin_grad_norm": grad_norm}
    return z


def langevin_prior(
    prior: Prior,
    z_init: torch.Tensor,
    *,
    num_steps: int,
    step_size: float,
    add_noise: bool = True,
    noise: torch.Tensor | None = None,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """K steps of the same update on log p_α(z) alone (EBM prior sampling, LEBM baseline)."""
    batch, nz = z_init.shape
    _check_noise(noise if add_noise else None, batch, num_steps, nz)
    z = z_init.detach().float().clone()
    half_s2 = 0.5 * step_size**2
    with frozen(prior if isinstance(prior, nn.Module) else None):
        for k in range(num_steps):
            z.requires_grad_(True)
            (grad,) = torch.autograd.grad(prior.log_prob(z).sum(), z)
            with torch.no_grad():
                eps = None
                if add_noise:
                    eps = noise[:, k] if noise is not None else torch.randn(z.shape, generator=rng, device=z.device)
                z = _langevin_update(z.detach(), grad, eps, half_s2, step_size)
    return z.detach()
