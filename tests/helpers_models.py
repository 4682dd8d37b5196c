"""Tiny analytic models for reference tests."""

import torch
from torch import nn


class LinearGenerator(nn.Module):
    """g(z) = W z + b, reshaped to an image (B, C, H, W): the factor-analysis special case."""

    def __init__(self, nz: int, image_shape=(3, 2, 2), scale: float = 1.0, bias: bool = False, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.nz, self.image_shape = nz, image_shape
        d_out = int(torch.tensor(image_shape).prod())
        self.weight = nn.Parameter(scale * torch.randn(d_out, nz, generator=gen, dtype=torch.float64))
        self.bias = nn.Parameter(0.1 * torch.randn(d_out, generator=gen, dtype=torch.float64)) if bias else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = z.to(self.weight.dtype) @ self.weight.T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(z.shape[0], *self.image_shape)
