"""Latent-space normalizing-flow prior p_α(z) (paper section 3.1, Eq. 1, 2, 5).

z = f_α(z0), z0 ~ N(0, I). Each Glow step maps z0-side → z-side as the inverse of
the density direction used by the official code:

    density direction (z → z0, one pass of f_α⁻¹, Eq. 2):
        actnorm → invertible linear (LU) → affine coupling
    sampling direction (z0 → z, f_α, Eq. 1): the exact inverse, steps in reverse order.

log p_α(z) = log N(f_α⁻¹(z); 0, I) + Σ_l log|det ∂z_{l-1}/∂z_l|            (Eq. 5)

Parameter layout follows the official fully-connected Glow so that the 10-step,
width-128, nz=128 prior has exactly Table 13's 586,240 parameters: the LU factors store
only their free entries (d² in all, the same as a full matrix), and each hidden layer of
the coupling network is linear (+bias) followed by an actnorm, as in the official code.
Everything here runs in float32 even under autocast: log-determinants are sums of many
small terms and the Langevin update needs them exact.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

_LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z0: torch.Tensor) -> torch.Tensor:
    """log N(z0; 0, I) summed over the last dim. (B, d) -> (B,)"""
    return -0.5 * (z0.pow(2).sum(-1) + z0.shape[-1] * _LOG_2PI)


class ActNorm(nn.Module):
    """y = (x + bias) * exp(logscale_factor * logs); per-feature, batch-independent.

    The official code scales the log-scale parameter by 3 (Glow's logscale_factor); we keep
    it so learning rates transfer. No data-dependent init: it would make the first batch
    special and break exact resume / world-size independence.
    """

    def __init__(self, dim: int, logscale_factor: float = 3.0, init_std: float = 0.05):
        super().__init__()
        self.logscale_factor = logscale_factor
        self.bias = nn.Parameter(torch.randn(1, dim) * init_std)
        self.logs = nn.Parameter(torch.randn(1, dim) * init_std)

    def log_scale(self) -> torch.Tensor:
        return self.logs * self.logscale_factor  # (1, d)

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_s = self.log_scale()
        return (x + self.bias) * torch.exp(log_s), log_s.sum().expand(x.shape[0])

    def from_base(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale()) - self.bias


class InvertibleLinear(nn.Module):
    """y = x @ W with W = P · L · (U + diag(sign · exp(log_s))) (Glow's LU form).

    log|det W| = Σ log_s, so the log-determinant is a sum, not an O(d³) determinant.
    P and sign are fixed buffers; the strictly-lower L and strictly-upper U store only their
    d(d−1)/2 free entries each, so the layer has exactly d² parameters.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        w_init = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))[0]
        p, lower, upper = torch.linalg.lu(w_init)
        diag = torch.diagonal(upper)
        rows_l, cols_l = torch.tril_indices(dim, dim, offset=-1)
        rows_u, cols_u = torch.triu_indices(dim, dim, offset=1)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(diag).float())
        self.register_buffer("idx_lower", torch.stack([rows_l, cols_l]), persistent=False)
        self.register_buffer("idx_upper", torch.stack([rows_u, cols_u]), persistent=False)
        self.lower_entries = nn.Parameter(lower[rows_l, cols_l].float())
        self.upper_entries = nn.Parameter(upper[rows_u, cols_u].float())
        self.log_s = nn.Parameter(torch.log(diag.abs()).float())

    def weight(self) -> torch.Tensor:
        d = self.dim
        eye = torch.eye(d, device=self.log_s.device, dtype=self.log_s.dtype)
        lower = eye.index_put((self.idx_lower[0], self.idx_lower[1]), self.lower_entries)
        upper = torch.diag(self.sign_s * torch.exp(self.log_s)).index_put(
            (self.idx_upper[0], self.idx_upper[1]), self.upper_entries
        )
        return self.perm @ lower @ upper  # (d, d)

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x @ self.weight(), self.log_s.sum().expand(x.shape[0])

    def from_base(self, y: torch.Tensor) -> torch.Tensor:
        # x = y W⁻¹, by solving x W = y: better conditioned than forming W⁻¹.
        return torch.linalg.solve(self.weight(), y, left=False)


class _HiddenLinear(nn.Module):
    """Linear (+bias) then actnorm, the official coupling network's hidden layer."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        nn.init.normal_(self.linear.weight, std=0.05)
        nn.init.zeros_(self.linear.bias)
        self.actnorm = ActNorm(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actnorm.to_base(self.linear(x))[0]


class _ZeroLinear(nn.Module):
    """Zero-initialised output layer with a learned log-scale: each coupling starts as identity."""

    def __init__(self, n_in: int, n_out: int, logscale_factor: float = 3.0):
        super().__init__()
        self.logscale_factor = logscale_factor
        self.weight = nn.Parameter(torch.zeros(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.logs = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight + self.bias) * torch.exp(self.logs * self.logscale_factor)


class AffineCoupling(nn.Module):
    """z2 ← (z2 + shift(z1)) · scale(z1), scale = sigmoid(h + 2) ∈ (0, 1) (bounded, as officially).

    The bound keeps the Jacobian well conditioned along Langevin chains that wander far from
    the training latents; sigmoid(·+2) ≈ 0.88 at init rather than 0.5.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"flow dim must be even for a half-split coupling, got {dim}")
        self.half = dim // 2
        self.net = nn.Sequential(
            _HiddenLinear(self.half, hidden),
            nn.ReLU(),
            _HiddenLinear(hidden, hidden),
            nn.ReLU(),
            _ZeroLinear(hidden, dim),
        )

    def _shift_logscale(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(z1)
        return h[:, 0::2], F.logsigmoid(h[:, 1::2] + 2.0)

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = x[:, : self.half], x[:, self.half :]
        shift, log_scale = self._shift_logscale(z1)
        z2 = (z2 + shift) * torch.exp(log_scale)
        return torch.cat([z1, z2], dim=1), log_scale.sum(-1)

    def from_base(self, y: torch.Tensor) -> torch.Tensor:
        z1, z2 = y[:, : self.half], y[:, self.half :]
        shift, log_scale = self._shift_logscale(z1)
        return torch.cat([z1, z2 * torch.exp(-log_scale) - shift], dim=1)


class FlowStep(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.actnorm = ActNorm(dim)
        self.linear = InvertibleLinear(dim)
        self.coupling = AffineCoupling(dim, hidden)

    def to_base(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = z.new_zeros(z.shape[0])
        for layer in (self.actnorm, self.linear, self.coupling):
            z, ld = layer.to_base(z)
            log_det = log_det + ld
        return z, log_det

    def from_base(self, z0: torch.Tensor) -> torch.Tensor:
        for layer in (self.coupling, self.linear, self.actnorm):
            z0 = layer.from_base(z0)
        return z0


class FlowPrior(nn.Module):
    """Fully-connected Glow prior with exact log-density and ancestral sampling."""

    def __init__(self, dim: int, num_steps: int = 10, hidden: int = 128):
        super().__init__()
        if dim < 2 or num_steps < 1 or hidden < 1:
            raise ValueError(f"FlowPrior needs dim>=2, num_steps>=1, hidden>=1; got {dim}, {num_steps}, {hidden}")
        self.dim = dim
        self.steps = nn.ModuleList(FlowStep(dim, hidden) for _ in range(num_steps))

    def to_base(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f_α⁻¹: (B, d) latents → (z0 (B, d), Σ log|det ∂z_{l-1}/∂z_l| (B,))."""
        log_det = z.new_zeros(z.shape[0])
        for step in self.steps:
            z, ld = step.to_base(z)
            log_det = log_det + ld
        return z, log_det

    def from_base(self, z0: torch.Tensor) -> torch.Tensor:
        """f_α: (B, d) base samples → latents (Eq. 1)."""
        for step in reversed(self.steps):
            z0 = step.from_base(z0)
        return z0

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Exact log p_α(z) by Eq. 5. (B, d) -> (B,), float32 even under autocast."""
        # float32 (or float64 when the module is float64, as in the reference tests)
        dtype = torch.float64 if self.steps[0].actnorm.bias.dtype == torch.float64 else torch.float32
        # Leave autocast only where it is on: a compiled Langevin step (which calls this outside the
        # generator's autocast) then has no autocast region in its graph for the prior.
        region = (
            torch.autocast(device_type=z.device.type, enabled=False)
            if torch.is_autocast_enabled(z.device.type)
            else contextlib.nullcontext()
        )
        with region:
            z0, log_det = self.to_base(z.to(dtype).reshape(z.shape[0], -1))
            return standard_normal_log_prob(z0) + log_det

    # -- the prior interface shared with GaussianPrior and EBMPrior (see models/__init__.py) ----
    normalized = True  # log_prob is an exact, normalised log-density
    loss_noise_shape = None  # prior_loss needs no randomness of its own

    def prior_loss(self, z_posterior: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """−mean log p_α(z) over inferred latents; its gradient is −Eq. 6."""
        return -self.log_prob(z_posterior.detach()).mean()

    @property
    def sample_noise_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @torch.no_grad()
    def sample_from_noise(self, z0: torch.Tensor) -> torch.Tensor:
        """Ancestral sampling z = f_α(z0) from given base noise z0 (n, dim)."""
        anchor = self.steps[0].actnorm.bias
        with torch.autocast(device_type=anchor.device.type, enabled=False):
            return self.from_base(z0.to(device=anchor.device, dtype=anchor.dtype))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling z = f_α(z0), z0 ~ N(0, I). Returns (n, dim)."""
        anchor = self.steps[0].actnorm.bias
        return self.sample_from_noise(
            torch.randn(n, self.dim, generator=generator, device=anchor.device, dtype=anchor.dtype)
        )
