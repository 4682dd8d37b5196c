"""Posterior / prior sampling. Pure math: no distributed or launcher imports."""

from .langevin import LogPosteriorFn, frozen, langevin_posterior, langevin_prior, log_likelihood, log_posterior

__all__ = ["langevin_posterior", "langevin_prior", "log_likelihood", "log_posterior", "LogPosteriorFn", "frozen"]
