"""Weight averaging, as every strong image-generator trainer has it: an EMA of the generator and the
prior (and LFBM-VAE's encoder), and EDM2's post-hoc EMA.

* The EMA with a half-life (StyleGAN2-ADA, EDM): after every optimizer step, ema ← β·ema + (1 − β)·θ
  with β = ½^(global batch / half-life in images), the half-life at most `rampup` × the images seen
  (early on the average forgets the random initialisation quickly). Samples, FID, evaluations and
  exports use it by default.
* Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
  Models", §3): two power-function EMAs, ema_t = Σ_τ≤t w(τ)·θ_τ with w(τ) ∝ τ^γ — updated as
  ema ← β_t·ema + (1 − β_t)·θ_t, β_t = (1 − 1/t)^(γ+1) at step t — whose weights are saved at
  intervals. Any other EMA length (relative standard deviation σ_rel of its averaging profile) is
  then rebuilt after training as the least-squares combination of the saved snapshots whose profiles
  best match the wanted one (`posthoc_coefficients`), so the length is chosen by FID rather than
  guessed before the run.

Never feeds training: Langevin inference and the learning loss use the raw weights; the averages only
read them after each step (the trajectory is bitwise the same with EMA on or off: tested). Under DDP
and ZeRO-1/2 every rank holds the full parameters, so every rank keeps the same averages, with no
communication; in checkpoints they are the `ema*/NAME` keys of the one format (state_schema.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import state_schema as schema
from ..config import EmaConfig

log = logging.getLogger("lfbm_dist")
POSTHOC_DIR = "ema_posthoc"  # RUN_DIR/ema_posthoc/ema_std<σ>-<images>.safetensors


@contextlib.contextmanager
def weights_loaded(model: nn.Module, named: dict[str, torch.Tensor]):
    """The model with these parameter values inside, the ones it had restored after — in place, so the
    parameters keep their addresses (compiled and recorded chains stay valid)."""
    params = dict(model.named_parameters())
    kept = {n: params[n].detach().clone() for n in named}
    try:
        with torch.no_grad():
            for name, value in named.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        yield model
    finally:
        with torch.no_grad():
            for name, value in kept.items():
                params[name].copy_(value)


# ---------------------------------------------------------------------------- power-function profiles
def std_to_gamma(std: float) -> float:
    """The exponent γ of the power-function profile whose relative standard deviation is `std`:
    σ_rel² = (γ + 1) / ((γ + 2)² (γ + 3)), decreasing in γ (σ_rel → 1/√12 as γ → 0)."""
    if not 0.0 < std < math.sqrt(1 / 12):
        raise ValueError(f"a power-function EMA's relative standard deviation is in (0, {math.sqrt(1 / 12):.4f})")

    def sigma(g: float) -> float:
        return math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))

    lo, hi = 0.0, 1.0
    while sigma(hi) > std:
        hi *= 2
    for _ in range(200):  # bisection: σ is monotone in γ
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sigma(mid) > std else (lo, mid)
    return (lo + hi) / 2


def profile_dot(t_a: float, g_a: float, t_b: float, g_b: float) -> float:
    """∫ p_a p_b dτ of the averaging profiles p(τ) = (γ + 1) τ^γ / t^(γ+1) on [0, t] (each sums to 1):
    (γa + 1)(γb + 1) m^(γa+γb+1) / ((γa + γb + 1) ta^(γa+1) tb^(γb+1)), m = min(ta, tb)."""
    m = min(t_a, t_b)
    log_value = (
        math.log((g_a + 1) * (g_b + 1) / (g_a + g_b + 1))
        + (g_a + g_b + 1) * math.log(m)
        - (g_a + 1) * math.log(t_a)
        - (g_b + 1) * math.log(t_b)
    )
    return math.exp(log_value)


def posthoc_coefficients(snapshots: list[tuple[float, float]], t_out: float, gamma_out: float) -> np.ndarray:
    """Weights x of the saved snapshots (time t, exponent γ each) such that Σ x_i p_i is the least-squares
    best match of the profile (t_out, γ_out): the normal equations A x = b, A_ij = ⟨p_i, p_j⟩,
    b_i = ⟨p_i, p_out⟩ (solved by least squares: snapshots close in time make A near-singular)."""
    a = np.array([[profile_dot(ti, gi, tj, gj) for tj, gj in snapshots] for ti, gi in snapshots])
    b = np.array([profile_dot(ti, gi, t_out, gamma_out) for ti, gi in snapshots])
    return np.linalg.lstsq(a, b, rcond=None)[0]


# ---------------------------------------------------------------------------- the averages of a run
class WeightAverages:
    """The averages of one model's parameters (on their device), updated after each optimizer step."""

    def __init__(self, model: nn.Module, cfg: EmaConfig, global_batch: int):
        self.cfg, self.global_batch = cfg, global_batch
        params = dict(model.named_parameters())
        self.kinds: dict[str, dict[str, torch.Tensor]] = {}
        if cfg.halflife_kimg > 0:
            self.kinds[schema.EMA] = {n: p.detach().float().clone() for n, p in params.items()}
        self.gammas = {schema.power_ema(s): std_to_gamma(s) for s in cfg.posthoc_std}
        for kind in self.gammas:
            self.kinds[kind] = {n: p.detach().float().clone() for n, p in params.items()}

    @property
    def enabled(self) -> bool:
        return bool(self.kinds)

    @torch.no_grad()
    def update(self, model: nn.Module, images_seen: int, step: int) -> None:
        """After the optimizer step that brought the run to `step` steps and `images_seen` images."""
        betas = {kind: (1.0 - 1.0 / max(step, 1)) ** (gamma + 1.0) for kind, gamma in self.gammas.items()}
        if schema.EMA in self.kinds:
            halflife = self.cfg.halflife_kimg * 1000.0
            if self.cfg.rampup > 0:
                halflife = min(halflife, images_seen * self.cfg.rampup)
            betas[schema.EMA] = 0.5 ** (self.global_batch / max(halflife, 1e-8))
        for name, p in model.named_parameters():
            for kind, beta in betas.items():
                self.kinds[kind][name].lerp_(p.detach().float(), 1.0 - beta)  # β·ema + (1 − β)·θ

    # ------------------------------------------------------------------ the one checkpoint format
    def sizes(self) -> dict[str, int]:
        return {schema.key(k, n): t.numel() * 4 for k, ts in self.kinds.items() for n, t in ts.items()}

    def state(self, keep=None) -> dict[str, torch.Tensor]:
        """CPU float32 copies (only the keys in `keep`: what this rank's snapshot writer writes)."""
        # host–device sync: a snapshot copies the averages to the host (snapshot steps only)
        return {
            schema.key(k, n): t.to("cpu", copy=True)
            for k, ts in self.kinds.items()
            for n, t in ts.items()
            if keep is None or schema.key(k, n) in keep
        }

    def load(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """From a checkpoint's state; averages it does not hold (a run from before weight averaging,
        or a new profile) start from its raw weights, said in one line."""
        fresh = []
        for kind, tensors in self.kinds.items():
            if all(schema.key(kind, n) in state for n in tensors):
                for name, t in tensors.items():
                    t.copy_(state[schema.key(kind, name)].to(t.device))
            else:
                fresh.append(kind)
                for name, t in tensors.items():
                    t.copy_(state[schema.key(schema.PARAM, name)].to(t.device))
        if fresh:
            log.info("lfbm_dist: %s holds no %s: they start from its raw weights", source, ", ".join(fresh))

    # ------------------------------------------------------------------ using them
    @contextlib.contextmanager
    def applied(self, model: nn.Module, kind: str = schema.EMA):
        """The model with the averaged weights inside, the raw ones restored after (weights_loaded)."""
        if kind not in self.kinds:
            yield model
            return
        with weights_loaded(model, self.kinds[kind]):
            yield model

    def write_posthoc(self, run_dir: str | Path, images_seen: int, step: int) -> None:
        """Rank 0: the power-function EMAs' weights now (small: weights only), for post-hoc EMA."""
        from safetensors.torch import save_file

        from ..files import write_atomic

        folder = Path(run_dir) / POSTHOC_DIR
        folder.mkdir(parents=True, exist_ok=True)
        dtype = getattr(torch, self.cfg.posthoc_dtype)
        for kind, gamma in self.gammas.items():
            path = folder / f"{kind}-{images_seen:012d}.safetensors"
            tmp = path.with_suffix(".tmp")
            tensors = {n: t.to("cpu", dtype).contiguous() for n, t in self.kinds[kind].items()}  # NHWC weights
            meta = {
                schema.STEPS_DONE: str(step),
                schema.IMAGES_SEEN: str(images_seen),
                "gamma": repr(gamma),
                "kind": kind,
            }
            save_file(tensors, str(tmp), metadata=meta)
            tmp.replace(path)
        write_atomic(folder / "README.txt", "Power-function EMA weights for post-hoc EMA: lfbm-evaluate --ema-length\n")


def posthoc_snapshots(run_dir: str | Path, up_to_images: int | None = None) -> list[tuple[Path, int, float]]:
    """The saved power-function EMA snapshots of a run: (file, step, γ), up to a checkpoint's images."""
    from safetensors import safe_open

    found = []
    for path in sorted((Path(run_dir) / POSTHOC_DIR).glob(f"{schema.EMA}_std*-*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        if up_to_images is None or int(meta[schema.IMAGES_SEEN]) <= up_to_images:
            found.append((path, int(meta[schema.STEPS_DONE]), float(meta["gamma"])))
    return found


def posthoc_weights(run_dir: str | Path, std: float, up_to_images: int | None = None) -> dict[str, torch.Tensor]:
    """The EMA of relative standard deviation `std` at the newest snapshot (≤ up_to_images), rebuilt from
    the run's power-function snapshots (post-hoc EMA). float32, by parameter name."""
    from safetensors.torch import load_file

    snaps = posthoc_snapshots(run_dir, up_to_images)
    if not snaps:
        from .checkpoint import CheckpointError

        raise CheckpointError(
            f"{run_dir}: no post-hoc EMA snapshots in {POSTHOC_DIR}/ (train with ema.posthoc_std set, the default)"
        )
    t_out = max(step for _, step, _ in snaps)
    coefficients = posthoc_coefficients([(step, gamma) for _, step, gamma in snaps], t_out, std_to_gamma(std))
    out: dict[str, torch.Tensor] = {}
    for (path, _, _), x in zip(snaps, coefficients):
        for name, t in load_file(str(path)).items():
            out[name] = out[name] + float(x) * t.float() if name in out else float(x) * t.float()
    return out
