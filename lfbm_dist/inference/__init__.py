"""Posterior / prior sampling. Pure math: no distributed or launcher imports."""
from .langevin import frozen, langevin_posterior, langevin_prior, log_likelihood

__all__ = ["langevin_posterior", "langevin_prior", "log_likelihood", "frozen"]
