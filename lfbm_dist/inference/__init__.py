"""Posterior / prior sampling. Pure math: no distributed or launcher imports."""

from .chain import EAGER, ChainRunner, langevin_posterior
from .graphs import GRAPHS, ChainRunError, GraphUse, graph_use
from .langevin import (
    batch_coupled,
    frozen,
    langevin_prior,
    langevin_update,
    log_likelihood,
    log_posterior,
    posterior_step,
    posterior_steps,
)

__all__ = [
    "EAGER",
    "GRAPHS",
    "ChainRunner",
    "ChainRunError",
    "GraphUse",
    "graph_use",
    "langevin_posterior",
    "langevin_prior",
    "langevin_update",
    "log_likelihood",
    "log_posterior",
    "posterior_step",
    "posterior_steps",
    "batch_coupled",
    "frozen",
]
