"""The learning step's gradients equal Eq. 6 and Eq. 7 computed independently."""

import math

import torch
from conftest import randomize_
from helpers_models import LinearGenerator

from lfbm_dist.config import Config
from lfbm_dist.models import LFBM, FlowPrior
from lfbm_dist.training.build import build_optimizer


def _bruteforce_log_prob(flow: FlowPrior, z: torch.Tensor) -> torch.Tensor:
    """log N(f⁻¹(z)) + log|det ∂f⁻¹/∂z| with the Jacobian from autograd, not the flow's own log-det."""
    out = []
    for zi in z:
        inverse = lambda v: flow.to_base(v[None])[0][0]
        jac = torch.autograd.functional.jacobian(inverse, zi, create_graph=True)
        z0 = inverse(zi)
        out.append(-0.5 * z0 @ z0 - 0.5 * len(zi) * math.log(2 * math.pi) + torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


def test_gradients_match_eq6_and_eq7():
    torch.manual_seed(0)
    nz, sigma, batch = 4, 0.7, 5
    gen = LinearGenerator(nz=nz, bias=True, seed=3)
    flow = randomize_(FlowPrior(nz, num_steps=2, hidden=8).double(), 0.1, seed=4)
    model = LFBM(gen, flow, sigma=sigma)
    x = torch.randn(batch, 3, 2, 2, dtype=torch.float64)
    z = torch.randn(batch, nz, dtype=torch.float64)
    loss, _ = model(x, z)
    loss.backward()

    # Eq. 7: ∇β log p(x|z) = (x − g(z)) ∇β g(z) / σ²; the loss is its negative batch mean.
    residual = (x - gen(z)).reshape(batch, -1).detach()  # (B, D)
    expected_w = -(residual.T @ z) / (sigma**2 * batch)
    expected_b = -residual.sum(0) / (sigma**2 * batch)
    assert torch.allclose(gen.weight.grad, expected_w, atol=1e-10)
    assert torch.allclose(gen.bias.grad, expected_b, atol=1e-10)

    # Eq. 6: ∇α log p_α(z), with log p_α from a brute-force Jacobian (independent of the flow's
    # log-det code), differentiated by autograd through that independent expression.
    params = list(flow.parameters())
    reference = torch.autograd.grad(-_bruteforce_log_prob(flow, z).mean(), params)
    for p, ref in zip(params, reference):
        assert torch.allclose(p.grad, ref, atol=1e-8), p.shape


def test_one_optimizer_two_groups_is_two_adams():
    """One Adam over two parameter groups updates exactly like two separate Adams (the paper)."""
    cfg = Config()
    cfg.generator.nz = 4
    torch.manual_seed(0)
    gen_a = LinearGenerator(nz=4, seed=5).float()
    flow_a = FlowPrior(4, num_steps=1, hidden=4)
    model_a = LFBM(gen_a, flow_a, sigma=0.5)
    model_b = LFBM(LinearGenerator(nz=4, seed=5).float(), FlowPrior(4, num_steps=1, hidden=4), sigma=0.5)
    model_b.load_state_dict(model_a.state_dict())
    opt_joint = build_optimizer(cfg, model_a)
    opt_g = torch.optim.Adam(model_b.generator.parameters(), lr=cfg.optim.lr_generator, betas=(0.5, 0.999))
    opt_p = torch.optim.Adam(model_b.prior.parameters(), lr=cfg.optim.lr_prior, betas=(0.5, 0.999))
    for _ in range(3):
        x, z = torch.randn(6, 3, 2, 2), torch.randn(6, 4)
        for model, opts in ((model_a, [opt_joint]), (model_b, [opt_g, opt_p])):
            for o in opts:
                o.zero_grad()
            model(x, z)[0].backward()
            for o in opts:
                o.step()
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-7), name
