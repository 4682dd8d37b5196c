"""Model math only: no Accelerate, DeepSpeed or torch.distributed imports in this package."""

from .ebm_prior import EBMPrior
from .flow_prior import FlowPrior, standard_normal_log_prob
from .gaussian_prior import GaussianPrior
from .generator import (
    GENERATOR_SPECS,
    ConvGenerator,
    GeneratorSpec,
    MLPGenerator,
    build_generator,
)
from .lfbm import LFBM

__all__ = [
    "LFBM",
    "FlowPrior",
    "GaussianPrior",
    "EBMPrior",
    "ConvGenerator",
    "GeneratorSpec",
    "MLPGenerator",
    "GENERATOR_SPECS",
    "build_generator",
    "standard_normal_log_prob",
]
