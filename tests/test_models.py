"""Architectures: Table 13 parameter counts, output shapes, all priors share one interface."""

import pytest
import torch

from lfbm_dist.config import load_config
from lfbm_dist.models import GENERATOR_SPECS, EBMPrior, FlowPrior, GaussianPrior, build_generator
from lfbm_dist.training.build import build_model, count_parameters


def test_table13_parameter_counts_from_the_preset(root):
    model = build_model(load_config(root / "configs/celebahq256.yaml"))
    assert count_parameters(model.generator) == 49_817_731
    assert count_parameters(model.prior) == 586_240


@pytest.mark.parametrize("arch", sorted(GENERATOR_SPECS))
def test_generator_shapes(arch):
    spec = GENERATOR_SPECS[arch]
    gen = build_generator(arch, nz=10, ngf=4, image_channels=3)
    out = gen(torch.randn(2, 10))
    assert out.shape == (2, 3, spec.resolution(), spec.resolution())
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("prior", [FlowPrior(6, 2, 8), GaussianPrior(6), EBMPrior(6, 16, 5, 0.3)])
def test_prior_interface(prior):
    z = torch.randn(4, 6)
    assert prior.log_prob(z).shape == (4,)
    assert prior.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 6)
    loss = prior.prior_loss(z)
    assert loss.shape == ()


def test_ebm_prior_loss_gradient_is_contrastive():
    """∇α loss = E_neg[∇f] − E_pos[∇f]: pushing f up on posterior latents lowers the loss."""
    torch.manual_seed(0)
    prior = EBMPrior(4, hidden=8, langevin_steps=5, langevin_step_size=0.3)
    z_pos = torch.randn(16, 4) + 2.0
    noise = torch.randn(16, 6, 4)
    loss = prior.prior_loss(z_pos, noise=noise)
    loss.backward()
    z_neg = prior.sample_from_noise(noise)
    prior.zero_grad()
    (prior.score(z_neg).mean() - prior.score(z_pos).mean()).backward()
    grads_ref = [p.grad.clone() for p in prior.parameters()]
    prior.zero_grad()
    prior.prior_loss(z_pos, noise=noise).backward()
    for p, ref in zip(prior.parameters(), grads_ref):
        assert torch.allclose(p.grad, ref)


@pytest.mark.parametrize("channels,count,columns,pad_value", [(3, 13, 4, 0.0), (1, 8, 8, 1.0), (3, 2, 8, 0.0)])
def test_image_grids_are_torchvisions_pixels(tmp_path, channels, count, columns, pad_value):
    """lfbm_dist.image_grid (kept to spare every sampling command torchvision's import) draws exactly
    what torchvision.utils.make_grid / save_image draw."""
    import torchvision
    from PIL import Image

    from lfbm_dist.image_grid import save_png, tile

    images = torch.rand(count, channels, 6, 6, generator=torch.Generator().manual_seed(count)) * 2.4 - 1.2
    theirs = torchvision.utils.make_grid(
        images.clone(), nrow=columns, normalize=True, value_range=(-1, 1), pad_value=pad_value
    )
    assert torch.equal(tile(images, columns, pad_value=pad_value), theirs)
    png = tmp_path / "theirs.png"
    torchvision.utils.save_image(images.clone(), png, nrow=columns, normalize=True, value_range=(-1, 1))
    save_png(images, tmp_path / "ours.png", columns=columns)
    with Image.open(tmp_path / "theirs.png") as a, Image.open(tmp_path / "ours.png") as b:
        assert a.size == b.size and a.tobytes() == b.tobytes()
