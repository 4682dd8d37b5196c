"""Build models, optimizers and data feeds from a Config (no wrapping here)."""
from __future__ import annotations

import torch

from .config import Config
from .models import LFBM, EBMPrior, FlowPrior, GaussianPrior, build_generator


def build_model(cfg: Config) -> LFBM:
    g, p = cfg.generator, cfg.prior
    generator = build_generator(g.arch, nz=g.nz, ngf=g.ngf or None, image_channels=g.image_channels)
    if p.kind == "flow":
        prior = FlowPrior(g.nz, num_steps=p.flow_steps, hidden=p.flow_hidden)
    elif p.kind == "gaussian":
        prior = GaussianPrior(g.nz)
    else:
        prior = EBMPrior(g.nz, hidden=p.ebm_hidden, langevin_steps=p.ebm_langevin_steps,
                         langevin_step_size=p.ebm_langevin_step_size)
    encoder = None
    if cfg.inference.kind == "vae":
        from .models.encoder import IAFEncoder

        i = cfg.inference
        encoder = IAFEncoder(cfg.data.resolution, g.image_channels, g.nz, ndf=i.encoder_ndf,
                             iaf_steps=i.iaf_steps, iaf_hidden=i.iaf_hidden)
    return LFBM(generator, prior, sigma=cfg.langevin.sigma, encoder=encoder)


def build_optimizer(cfg: Config, model: LFBM) -> torch.optim.Adam:
    """One Adam, two parameter groups (generator β, prior α) ≡ the paper's two Adams."""
    o = cfg.optim
    groups = [{"params": list(model.generator.parameters()), "lr": o.lr_generator, "name": "generator"}]
    prior_params = list(model.prior.parameters())
    if prior_params:
        groups.append({"params": prior_params, "lr": o.lr_prior, "name": "prior"})
    if model.encoder is not None:
        groups.append({"params": list(model.encoder.parameters()), "lr": o.lr_encoder, "name": "encoder"})
    return torch.optim.Adam(groups, betas=(o.beta1, o.beta2))


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
