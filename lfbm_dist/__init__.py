"""lfbm_dist: distributed training of LFBM, a latent-space normalizing-flow prior on a ConvNet
generator learned by maximum likelihood with short-run Langevin posterior inference
(Xie et al., AAAI 2023)."""

__version__ = "0.1.0"
