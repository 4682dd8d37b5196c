"""LFBM-VAE baseline (paper §4.1, appendix C/D): a bottom-up encoder followed by an inverse
autoregressive flow (IAF, Kingma et al. 2016) as the amortised posterior q_φ(z | x).

    ε ~ N(0, I),  z⁰ = μ(x) + σ(x) ⊙ ε
    zᵗ = gᵗ ⊙ zᵗ⁻¹ + (1 − gᵗ) ⊙ mᵗ,  [mᵗ, sᵗ] = MADE(zᵗ⁻¹, h(x)),  gᵗ = sigmoid(sᵗ + 1.5)
    log q(z | x) = log N(ε) − Σ log σ − Σ_t Σ log gᵗ

Each IAF step's Jacobian is triangular (output i depends on inputs < i), so its log-determinant is
Σ log gᵗ; the order is reversed between steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class AutoregressiveNet(nn.Module):
    """MADE: outputs (m, s) for dim i depend only on inputs < i (and on the context h)."""

    def __init__(self, dim: int, hidden: int, context: int):
        super().__init__()
        degrees_in = torch.arange(1, dim + 1)
        degrees_hidden = torch.arange(hidden) % max(1, dim - 1) + 1
        self.inp = MaskedLinear(dim, hidden, degrees_hidden[:, None] >= degrees_in[None, :])
        self.ctx = nn.Linear(context, hidden)
        self.mid = MaskedLinear(hidden, hidden, degrees_hidden[:, None] >= degrees_hidden[None, :])
        out_mask = degrees_in[:, None] > degrees_hidden[None, :]
        self.out = MaskedLinear(hidden, 2 * dim, torch.cat([out_mask, out_mask]))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.elu(self.inp(z) + self.ctx(h))
        a = F.elu(self.mid(a))
        m, s = self.out(a).chunk(2, dim=-1)
        return m, s


class IAFEncoder(nn.Module):
    """x (B, C, R, R) -> (z (B, nz), log q(z|x) (B,)), reparameterised with the given ε."""

    def __init__(
        self,
        resolution: int,
        image_channels: int,
        nz: int,
        ndf: int = 64,
        iaf_steps: int = 2,
        iaf_hidden: int = 256,
        context: int = 128,
    ):
        super().__init__()
        layers, ch, size = [], image_channels, resolution
        width = ndf
        while size > 4:
            layers += [nn.Conv2d(ch, width, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch, size, width = width, size // 2, min(width * 2, ndf * 8)
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(ch * size * size, 2 * nz + context)
        self.nz, self.context = nz, context
        self.steps = nn.ModuleList(AutoregressiveNet(nz, iaf_hidden, context) for _ in range(iaf_steps))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.conv(x).flatten(1))
        out = out if out.dtype == torch.float64 else out.float()  # float32 posterior math (float64 in tests)
        mu, log_sigma, h = out[:, : self.nz], out[:, self.nz : 2 * self.nz], out[:, 2 * self.nz :]
        log_sigma = log_sigma.clamp(-8, 4)
        z = mu + torch.exp(log_sigma) * eps
        log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(1) - log_sigma.sum(1)
        for t, step in enumerate(self.steps):
            if t:
                z = z.flip(-1)  # reverse the autoregressive order between steps
            m, s = step(z, h)
            gate = torch.sigmoid(s + 1.5)
            z = gate * z + (1 - gate) * m
            log_q = log_q - torch.log(gate).sum(1)
        if len(self.steps) % 2 == 0 and len(self.steps) > 0:
            z = z.flip(-1)  # undo the net flips so z's coordinates keep their meaning
        return z, log_q
