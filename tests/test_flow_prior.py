"""FlowPrior against independent references: normalisation on a grid, brute-force Jacobians,
and agreement between ancestral samples and the density."""

import math

import pytest
import torch
from conftest import randomize_

from lfbm_dist.models import FlowPrior, GaussianPrior


def _random_flow(dim: int, seed: int) -> FlowPrior:
    torch.manual_seed(seed)
    flow = FlowPrior(dim, num_steps=3, hidden=16).double()
    return randomize_(flow, 0.1, seed)  # away from identity: couplings, actnorms, LU all active


@pytest.mark.parametrize("seed", [0, 1])
def test_log_prob_integrates_to_one_in_2d(seed):
    flow = _random_flow(2, seed)
    lim, n = 12.0, 801
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = flow.log_prob(grid).exp().reshape(n, n)
    cell = (axis[1] - axis[0]) ** 2
    total = float(density.sum() * cell)
    assert abs(total - 1.0) < 2e-3, total


@pytest.mark.parametrize("dim", [2, 6])
def test_log_prob_matches_bruteforce_jacobian_float64(dim):
    flow = _random_flow(dim, 3)
    z = torch.randn(5, dim, dtype=torch.float64) * 1.5
    ours = flow.log_prob(z)
    for i in range(z.shape[0]):
        inverse = lambda v: flow.to_base(v[None])[0][0]  # f⁻¹ for one point
        jac = torch.autograd.functional.jacobian(inverse, z[i])  # (d, d), brute force
        z0 = inverse(z[i])
        reference = -0.5 * (z0 @ z0) - 0.5 * dim * math.log(2 * math.pi) + torch.linalg.slogdet(jac).logabsdet
        assert abs(float(ours[i].detach() - reference)) < 1e-6


def test_inverse_round_trip_and_sampling_direction():
    flow = _random_flow(6, 4)
    z0 = torch.randn(64, 6, dtype=torch.float64)
    z = flow.from_base(z0)
    back, _ = flow.to_base(z)
    assert torch.allclose(back, z0, atol=1e-9)


def test_samples_agree_with_density_2d_histogram():
    flow = _random_flow(2, 5)
    gen = torch.Generator().manual_seed(0)
    samples = flow.sample(200_000, generator=gen)
    # Histogram mass per cell vs the density integrated over that cell (midpoint rule on a fine sub-grid).
    lo, hi, bins = samples.quantile(0.01, 0).min().item(), samples.quantile(0.99, 0).max().item(), 12
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    hist = torch.histogramdd(samples.float(), bins=[edges.float(), edges.float()]).hist.double()
    empirical = hist / samples.shape[0]
    sub = 10
    fine = torch.linspace(lo, hi, bins * sub + 1, dtype=torch.float64)
    mid = (fine[:-1] + fine[1:]) / 2
    grid = torch.stack(torch.meshgrid(mid, mid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        dens = flow.log_prob(grid).exp().reshape(bins * sub, bins * sub) * (fine[1] - fine[0]) ** 2
    expected = dens.reshape(bins, sub, bins, sub).sum((1, 3))
    big = expected > 0.005
    rel = ((empirical[big] - expected[big]).abs() / expected[big]).max()
    assert rel < 0.1, float(rel)


def test_float32_under_autocast():
    flow = FlowPrior(8, num_steps=2, hidden=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = flow.log_prob(torch.randn(4, 8))
    assert out.dtype == torch.float32 and out.shape == (4,)


def test_gaussian_prior_is_standard_normal():
    prior = GaussianPrior(3)
    z = torch.randn(10, 3)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(prior.log_prob(z), ref, atol=1e-5)
