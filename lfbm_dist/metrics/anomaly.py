"""Unsupervised anomaly detection (§4.4, Table 4): score = log p(x, z) after posterior inference,

    log p(x, z) = log p_α(z) − ‖x − g(z)‖² / (2σ²) − D log(σ √(2π)),

high for normal images. AUPRC with the held-out class as the positive (anomalous) class.
"""
from __future__ import annotations

import math

import torch

from .. import dist
from .sampling import infer


def joint_log_prob(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        d = x[0].numel()
        sq = (x.float() - model.generator(z).float()).pow(2).flatten(1).sum(1)
        return (model.prior.log_prob(z) - sq / (2 * model.sigma**2)
                - d * math.log(model.sigma * math.sqrt(2 * math.pi)))


def anomaly_scores(model, batches, heldout_class: int, seed: int, num_steps: int, step_size: float):
    """batches: (x, indices, labels) split by rank. Returns gathered (scores, is_anomaly) on rank 0."""
    scores, flags = [], []
    for x, indices, labels in batches:
        z = infer(model, x, indices, seed, num_steps, step_size, tag="anomaly")
        scores.append(-joint_log_prob(model, x, z).double().cpu())  # higher = more anomalous
        flags.append((labels == heldout_class).double())
    local = torch.stack([torch.cat(scores), torch.cat(flags)]) if scores else torch.zeros(2, 0, dtype=torch.float64)
    if dist.is_initialized():
        gathered = [None] * dist.world_size()
        torch.distributed.all_gather_object(gathered, local)  # small: one score per test image
        local = torch.cat(gathered, dim=1)
    return local[0], local[1]


def auprc(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(is_anomaly.numpy(), scores.numpy()))
