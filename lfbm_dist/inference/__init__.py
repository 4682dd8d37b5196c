"""Posterior / prior sampling. Pure math: no distributed or launcher imports."""

from .chain import EAGER, GRAPHS, ChainRunner, chunked_steps, langevin_posterior
from .langevin import (
    batch_coupled,
    frozen,
    langevin_prior,
    langevin_update,
    log_likelihood,
    log_posterior,
    posterior_chain,
    posterior_steps,
)

__all__ = [
    "EAGER",
    "GRAPHS",
    "ChainRunner",
    "chunked_steps",
    "langevin_posterior",
    "langevin_prior",
    "langevin_update",
    "log_likelihood",
    "log_posterior",
    "posterior_chain",
    "posterior_steps",
    "batch_coupled",
    "frozen",
]
