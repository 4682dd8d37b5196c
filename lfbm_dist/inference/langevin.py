"""Short-run Langevin inference (paper Eq. 8) for the posterior p(z | x) and, for the
LEBM baseline, the EBM prior.

Step convention (the official code's, used everywhere in lfbm_dist):

    z ← z + ½ s² ∇_z log p(z | x) + s ε,     ε ~ N(0, I),   step_size = s (default 0.1)

which is Eq. 8 with ξ = s² / 2 (so √(2ξ) = s). A paper-style ξ converts as s = √(2ξ).

    log p(z | x) = log p_α(z) − ‖m ⊙ (x − g_β(z))‖² / (2σ²) + const            (Eq. 8, §4.3)

with m the visibility mask (1 = observed) for inpainting / learning from occluded data.

Two forms of the same chain: `langevin_posterior`'s step loop with torch.autograd.grad (the eager
reference) and `posterior_chain`, the whole K-step chain as one traceable function (the input
gradient by torch.func.grad, noise drawn up front) that torch.compile turns into one graph — and,
on CUDA, one CUDA-graph replay per chain (lfbm_dist/training/fastpath.py does the wrapping).

No weight gradients are ever computed here: every parameter of the generator and the
prior has requires_grad switched off for the duration of the chain (and restored after),
and gradients are taken with torch.autograd.grad w.r.t. z only, so `.grad` is untouched.
This is also what keeps inference free of collective communication under DDP: call it
with the plain (unwrapped) modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .likelihood import gaussian_energy, squared_error


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


LogPosteriorFn = Callable[..., torch.Tensor]  # same signature as log_posterior
ChainFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # same signature as posterior_chain


@dataclass(frozen=True)
class ChainOptions:
    """How a caller's chains run: fn = a whole-chain function such as the compiled `posterior_chain`
    (None: the eager step loop), batch = chains per call (None: the caller's batch)."""

    fn: ChainFn | None = None
    batch: int | None = None


EAGER_CHAIN = ChainOptions()


def batch_coupled(module: nn.Module) -> bool:
    """True if a forward pass reads or writes the batch's statistics (BatchNorm in training mode):
    such a chain depends on how samples are batched and mutates buffers, so it can be neither
    re-batched nor expressed as one functional graph; it runs the step loop instead."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in module.modules())


def posterior_chain(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """All K steps of Eq. 8 as one pure function of tensors: (z_K, per-sample ‖∇‖ at the last step).

    noise: (B, K, nz) or None (noise-free). Nothing here is stateful or calls autograd.grad, so
    torch.compile(fullgraph=True) captures the whole chain: the K input gradients (torch.func.grad,
    whose backward Inductor fuses with the forward), the updates and the noise. Same update as the
    step loop, term for term. Call it under `frozen(...)` and torch.no_grad(): func.grad still
    differentiates w.r.t. z, and no graph to the weights is recorded.
    """

    def total_log_posterior(z_: torch.Tensor) -> torch.Tensor:
        # Chains are independent, so the gradient of the sum is each chain's own gradient.
        return log_posterior(generator, prior, z_, x, sigma, mask, autocast_dtype).sum()

    grad_fn = torch.func.grad(total_log_posterior)
    half_s2 = 0.5 * step_size**2
    grad_norm = z.new_zeros(z.shape[0])
    for k in range(num_steps):  # unrolled by the compiler: K is static for a graph
        grad = grad_fn(z)
        z = torch.add(z, grad, alpha=half_s2)
        if noise is not None:
            z = torch.add(z, noise[:, k], alpha=step_size)
        if k == num_steps - 1:
            grad_norm = grad.norm(dim=1)
    return z, grad_norm


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
    chain_fn: ChainFn | None = None,
    chain_batch: int | None = None,
    return_stats: bool = False,
):
    """K steps of Eq. 8 on log p(z | x); chains start at z_init, else at N(0, I).

    x: (B, C, H, W) in the generator's range; mask: broadcastable to x, 1 = visible.
    noise: optional (B, K, nz) pre-drawn ε (the trainer derives it from per-sample seeds so that
    a global batch gives the same chains on any number of ranks); else drawn from `rng`.
    log_posterior_fn: a drop-in for `log_posterior` (e.g. its torch.compile'd form); same math.
    chain_fn: a drop-in for `posterior_chain` (e.g. its compiled, graphed form): the whole chain in one
    call, with the noise drawn up front (from `rng` in the step loop's order, so results do not change).
    chain_batch: run the chains chain_batch at a time (chains are independent: only the float
    reduction order can differ); with chain_fn every call gets exactly chain_batch chains (the last
    chunk padded, the padding discarded), so a compiled graph never sees a new shape.
    A batch-coupled generator (BatchNorm in training mode) ignores chain_fn and chain_batch.
    Returns z (B, nz) detached, and with return_stats a dict of device tensors (no host sync).
    """
    if num_steps < 0 or step_size <= 0 or sigma <= 0:
        raise ValueError(f"need num_steps >= 0, step_size > 0, sigma > 0; got {num_steps}, {step_size}, {sigma}")
    batch, nz = x.shape[0], generator.nz
    if z_init is None:
        z_init = torch.randn(batch, nz, generator=rng, device=x.device)
    _check_noise(noise if add_noise else None, batch, num_steps, nz)
    coupled = batch_coupled(generator)
    chain_fn = None if coupled else chain_fn
    chunk = batch if (coupled or not chain_batch) else chain_batch
    if add_noise and noise is None and (chain_fn is not None or chunk < batch):
        # Drawn up front in the step loop's order (z_init first, then step by step): the same chains.
        noise = torch.stack([torch.randn(z_init.shape, generator=rng, device=x.device) for _ in range(num_steps)], 1)

    def run(x_, z_init_, noise_, mask_) -> tuple[torch.Tensor, torch.Tensor]:
        args = (generator, prior, x_, z_init_.detach().float().clone(), noise_ if add_noise else None)
        args += (num_steps, step_size, sigma, mask_, autocast_dtype)
        if chain_fn is not None:
            with torch.no_grad():
                return chain_fn(*args)
        return posterior_steps(*args, log_posterior_fn=log_posterior_fn, add_noise=add_noise, rng=rng)

    per_row = mask is not None and mask.dim() == x.dim() and mask.shape[0] == batch and batch > 1
    zs, norms = [], []
    with frozen(generator, prior if isinstance(prior, nn.Module) else None):  # once for all the chunks
        for start in range(0, batch, chunk):
            rows = slice(start, min(start + chunk, batch))
            parts = [x[rows], z_init[rows], noise[rows] if add_noise and noise is not None else None]
            parts.append(mask[rows] if per_row else mask)
            real = parts[0].shape[0]
            if chain_fn is not None and real < chunk:  # pad with copies of the last chain: static shapes
                parts = [
                    _pad_rows(t, chunk) if t is not None and (i < 3 or per_row) else t for i, t in enumerate(parts)
                ]
            z, grad_norm = run(*parts)
            zs.append(z[:real])
            norms.append(grad_norm[:real])
    z = torch.cat(zs) if len(zs) > 1 else zs[0]
    if return_stats:
        return z, {"langevin_grad_norm": torch.cat(norms).mean()}
    return z


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])])


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
    log_posterior_fn: LogPosteriorFn | None = None,
    add_noise: bool | None = None,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager reference: the same chain as `posterior_chain` (same signature and result), step by
    step with torch.autograd.grad. add_noise defaults to `noise is not None`; with add_noise and no
    noise, each step draws from `rng`. Call it under `frozen(...)`."""
    add_noise = noise is not None if add_noise is None else add_noise
    log_post_fn = log_posterior_fn or log_posterior
    half_s2 = 0.5 * step_size**2
    grad_norm = z.new_zeros(z.shape[0])
    with torch.enable_grad():  # also when a caller (a fallen-back compiled chain) is in no_grad mode
        for k in range(num_steps):
            z = z.detach().requires_grad_(True)
            log_post = log_post_fn(generator, prior, z, x, sigma, mask, autocast_dtype)
            # Chains are independent, so the gradient of the sum is each chain's own gradient.
            (grad,) = torch.autograd.grad(log_post.sum(), z)
            with torch.no_grad():
                eps = None
                if add_noise:
                    eps = noise[:, k] if noise is not None else torch.randn(z.shape, generator=rng, device=z.device)
                z = _langevin_update(z.detach(), grad, eps, half_s2, step_size)
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
