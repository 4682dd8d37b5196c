"""The observation model p_β(x | z) = N(x; g_β(z), σ²I), written once: every use (Langevin
inference, the learning loss, the VAE baseline, the anomaly score) goes through these two."""

from __future__ import annotations

import torch


def squared_error(x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """‖m ⊙ (x − x̂)‖² per image, (B,) float32 (the sum is done in float32 whatever x̂'s dtype)."""
    residual = x.float() - x_hat.float()
    if mask is not None:
        residual = residual * mask
    return residual.pow(2).flatten(1).sum(1)


def gaussian_energy(sq_err: torch.Tensor, sigma: float) -> torch.Tensor:
    """−log N(x; g(z), σ²I) up to its constant: ‖x − g(z)‖² / (2σ²)."""
    return sq_err / (2.0 * sigma**2)
