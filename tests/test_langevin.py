"""Posterior Langevin against the analytic posterior of a linear-Gaussian model, and its
promise not to touch (or even compute) weight gradients."""

import torch
from helpers_models import LinearGenerator

from lfbm_dist.inference import EAGER, langevin_posterior
from lfbm_dist.models import FlowPrior, GaussianPrior, build_generator


def _analytic_posterior(weight: torch.Tensor, x_flat: torch.Tensor, sigma: float, visible=None):
    """N(Σ Wᵀx/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹, restricted to visible pixels when masked."""
    if visible is not None:
        weight, x_flat = weight[visible], x_flat[visible]
    precision = torch.eye(weight.shape[1], dtype=torch.float64) + weight.T @ weight / sigma**2
    cov = torch.linalg.inv(precision)
    return cov @ weight.T @ x_flat / sigma**2, cov


def _run_chains(gen, x_one, sigma, mask=None, chains=4000, steps=1500, seed=0, runner=EAGER):
    rng = torch.Generator().manual_seed(seed)
    x = x_one.expand(chains, *x_one.shape).float()
    m = None if mask is None else mask.expand(chains, *mask.shape).float()
    return langevin_posterior(
        gen,
        GaussianPrior(gen.nz),
        x,
        num_steps=steps,
        step_size=0.1,
        sigma=sigma,
        mask=m,
        rng=rng,
        runner=runner,
    ).double()


def test_long_run_matches_analytic_posterior():
    torch.manual_seed(0)
    gen = LinearGenerator(nz=3, scale=0.6, seed=1)
    sigma = 1.0
    z_true = torch.randn(3, dtype=torch.float64)
    x_one = gen(z_true[None])[0] + sigma * torch.randn(3, 2, 2, dtype=torch.float64)
    mean, cov = _analytic_posterior(gen.weight.detach(), x_one.flatten(), sigma)
    z = _run_chains(gen, x_one, sigma)
    assert (z.mean(0) - mean).abs().max() < 0.05
    emp_cov = torch.cov(z.T)
    assert torch.linalg.norm(emp_cov - cov) / torch.linalg.norm(cov) < 0.10


def test_masked_likelihood_matches_posterior_of_visible_pixels():
    torch.manual_seed(1)
    gen = LinearGenerator(nz=3, scale=0.6, seed=2)
    sigma = 0.8
    x_one = gen(torch.randn(1, 3, dtype=torch.float64))[0] + sigma * torch.randn(3, 2, 2, dtype=torch.float64)
    mask = torch.ones(3, 2, 2, dtype=torch.float64)
    mask[:, 0, 0] = 0  # occlude one pixel position in every channel
    x_occluded = x_one.clone()
    x_occluded[:, 0, 0] = 100.0  # garbage under the mask must not matter
    visible = mask.flatten().bool()
    mean, cov = _analytic_posterior(gen.weight.detach(), x_one.flatten(), sigma, visible)
    z = _run_chains(gen, x_occluded, sigma, mask=mask, seed=3)
    assert (z.mean(0) - mean).abs().max() < 0.05
    assert torch.linalg.norm(torch.cov(z.T) - cov) / torch.linalg.norm(cov) < 0.10


def test_inference_leaves_weight_grads_untouched_and_uncomputed():
    torch.manual_seed(0)
    gen = build_generator("tiny16", nz=8, ngf=4)
    prior = FlowPrior(8, num_steps=2, hidden=8)
    params = list(gen.parameters()) + list(prior.parameters())
    sentinels = [torch.full_like(p, 7.0) for p in params]
    computed = []
    for p, s in zip(params, sentinels):
        p.grad = s.clone()
        p.register_hook(lambda g, name=len(computed): computed.append(name))  # noqa: B008 — fires if dL/dp is computed
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    z = langevin_posterior(gen, prior, x, num_steps=3, step_size=0.1, sigma=0.3)
    assert z.shape == (4, 8) and not z.requires_grad
    assert computed == []
    for p, s in zip(params, sentinels):
        assert torch.equal(p.grad, s)
        assert p.requires_grad  # restored after inference


def test_chain_is_deterministic_given_init_and_noise():
    gen = build_generator("tiny16", nz=8, ngf=4)
    prior = FlowPrior(8, num_steps=2, hidden=8)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z_init, noise = torch.randn(3, 8), torch.randn(3, 4, 8)
    a = langevin_posterior(gen, prior, x, num_steps=4, step_size=0.1, sigma=0.3, z_init=z_init, noise=noise)
    b = langevin_posterior(gen, prior, x, num_steps=4, step_size=0.1, sigma=0.3, z_init=z_init, noise=noise)
    assert torch.equal(a, b)
