"""Short-run Langevin inference (paper Eq. 8) for the posterior p(z | x) and, for the
LEBM baseline, the EBM prior.

Step convention (the official code's, used everywhere in lfbm_dist):

    z ← z + ½ s² ∇_z log p(z | x) + s ε,     ε ~ N(0, I),   step_size = s (default 0.1)

which is Eq. 8 with ξ = s² / 2 (so √(2ξ) = s). A paper-style ξ converts as s = √(2ξ).

    log p(z | x) = log p_α(z) − ‖m ⊙ (x − g_β(z))‖² / (2σ²) + const            (Eq. 8, §4.3)

with m the visibility mask (1 = observed) for inpainting / learning from occluded data.

Two forms of the same chain, sharing one update (`langevin_update`): `posterior_steps`, the step
loop with torch.autograd.grad (the eager reference), and `posterior_step`, ONE step as a traceable
function (the input gradient by torch.func.grad) that torch.compile turns into one graph, called K
times — on CUDA inside one captured CUDA graph, so a chain is one replay. How a batch of chains runs
(chunks, padding, layout, eager or compiled, captured) is chain.py's `ChainRunner`.

No weight gradients are ever computed here: every parameter of the generator and the
prior has requires_grad switched off for the duration of the chain (and restored after),
and gradients are taken with torch.autograd.grad w.r.t. z only, so `.grad` is untouched.
This is also what keeps inference free of collective communication under DDP: call it
with the plain (unwrapped) modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from .likelihood import gaussian_energy, squared_error

# Every BatchNorm torch has, by its public classes (the lazy ones subclass these).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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
    if autocast_dtype is None:  # no autocast region at all: a compiled float32 step has none in its graph
        x_hat = generator(z)
    else:
        with torch.autocast(device_type=z.device.type, dtype=autocast_dtype):
            x_hat = generator(z)
    return -gaussian_energy(squared_error(x, x_hat, mask), sigma)


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


def batch_coupled(module: nn.Module) -> bool:
    """True if a forward pass reads or writes the batch's statistics (BatchNorm in training mode):
    such a chain depends on how samples are batched and mutates buffers, so it can be neither
    re-batched nor expressed as one functional graph; it runs the step loop instead."""
    return any(isinstance(m, BATCH_NORMS) and m.training for m in module.modules())


def posterior_step(
    generator: nn.Module,
    prior: Prior,
    x: torch.Tensor,
    z: torch.Tensor,
    eps: torch.Tensor | None,
    step_size: float,
    sigma: float,
    mask: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ONE step of Eq. 8 as a pure function of tensors: (z', per-sample ‖∇‖ of this step).

    The compiled unit of every chain (chain.py): one graph serves every step of every chain of a
    shape, whatever K, so compile time does not grow with the chain. eps: (B, nz) or None
    (noise-free). Nothing here is stateful or calls autograd.grad, so torch.compile(fullgraph=True)
    captures the input gradient (torch.func.grad, its backward fused with the forward by Inductor)
    and the update. Same update as the step loop, term for term. Call it under `frozen(...)` and
    torch.no_grad(): func.grad still differentiates w.r.t. z, and no graph to the weights is recorded.
    """

    def total_log_posterior(z_: torch.Tensor) -> torch.Tensor:
        # Chains are independent, so the gradient of the sum is each chain's own gradient.
        return log_posterior(generator, prior, z_, x, sigma, mask, autocast_dtype).sum()

    grad = torch.func.grad(total_log_posterior)(z)
    return langevin_update(z, grad, eps, step_size), grad.norm(dim=1)


def langevin_update(z: torch.Tensor, grad: torch.Tensor, eps: torch.Tensor | None, step_size: float) -> torch.Tensor:
    """One step of Eq. 8, z + ½s²∇ + sε, as two multiply-adds; out of place (z may be a caller's
    tensor, and the graph stays functional). The one update of every chain: eager, compiled, prior."""
    z = torch.add(z, grad, alpha=0.5 * step_size**2)
    return torch.add(z, eps, alpha=step_size) if eps is not None else z


def _check_noise(noise: torch.Tensor | None, batch: int, num_steps: int, dim: int) -> None:
    if noise is not None and tuple(noise.shape) != (batch, num_steps, dim):
        raise ValueError(f"noise must have shape {(batch, num_steps, dim)}, got {tuple(noise.shape)}")


def posterior_steps(
    generator: nn.Module,
    prior: Prior,
    x: torch.Tensor,
    z: torch.Tensor,
    noise: torch.Tensor | None,
    num_steps: int,
    step_size: float,
    sigma: float,
    mask: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
    *,
    add_noise: bool | None = None,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager reference: the same chain as K calls of `posterior_step` (noise (B, K, nz)), step by
    step with torch.autograd.grad. add_noise defaults to `noise is not None`; with add_noise and no
    noise, each step draws from `rng`. Call it under `frozen(...)`."""
    add_noise = noise is not None if add_noise is None else add_noise
    grad_norm = z.new_zeros(z.shape[0])
    with torch.enable_grad():  # also when a caller (a fallen-back compiled chain) is in no_grad mode
        for k in range(num_steps):
            z = z.detach().requires_grad_(True)
            log_post = log_posterior(generator, prior, z, x, sigma, mask, autocast_dtype)
            # Chains are independent, so the gradient of the sum is each chain's own gradient.
            (grad,) = torch.autograd.grad(log_post.sum(), z)
            with torch.no_grad():
                eps = None
                if add_noise:
                    eps = noise[:, k] if noise is not None else torch.randn(z.shape, generator=rng, device=z.device)
                z = langevin_update(z.detach(), grad, eps, step_size)
            if k == num_steps - 1:
                grad_norm = grad.detach().norm(dim=1)
    return z.detach(), grad_norm


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
    with frozen(prior if isinstance(prior, nn.Module) else None):
        for k in range(num_steps):
            z.requires_grad_(True)
            (grad,) = torch.autograd.grad(prior.log_prob(z).sum(), z)
            with torch.no_grad():
                eps = None
                if add_noise:
                    eps = noise[:, k] if noise is not None else torch.randn(z.shape, generator=rng, device=z.device)
                z = langevin_update(z.detach(), grad, eps, step_size)
    return z.detach()
