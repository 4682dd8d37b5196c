"""Posterior / prior sampling. Pure math: no distributed or launcher imports."""

from .langevin import (
    EAGER_CHAIN,
    ChainFn,
    ChainOptions,
    LogPosteriorFn,
    batch_coupled,
    frozen,
    langevin_posterior,
    langevin_prior,
    log_likelihood,
    log_posterior,
    posterior_chain,
    posterior_steps,
)

__all__ = [
    "EAGER_CHAIN",
    "ChainOptions",
    "langevin_posterior",
    "langevin_prior",
    "log_likelihood",
    "log_posterior",
    "posterior_chain",
    "posterior_steps",
    "batch_coupled",
    "ChainFn",
    "LogPosteriorFn",
    "frozen",
]
