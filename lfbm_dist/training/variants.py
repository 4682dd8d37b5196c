"""How a training batch's latents are inferred, behind one interface: short-run posterior Langevin
(LFBM-MCMC, and the ABP / LEBM baselines, whatever the prior) or the amortised encoder of the
LFBM-VAE baseline. Each variant says how much per-sample randomness it needs; the trainer draws it
from the (seed, step, sample index) streams, so every variant is world-size independent."""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import Config
from ..data.feeds import Batch
from ..inference import ChainRunner, batch_coupled, langevin_posterior
from ..models import LFBM


class LatentInference(Protocol):
    def noise_shape(self, nz: int) -> tuple[int, ...]:
        """Per-sample randomness the variant consumes (drawn from seeding.Stream.LANGEVIN)."""

    def infer(self, plain: LFBM, batch: Batch, noise: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(what the learning step takes as `latents`, device-tensor stats): no host sync."""

    def infer_step(
        self, plain: LFBM, batches: list[Batch], noises: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """`infer` for every micro-batch of a step, as the variant finds fastest."""


class LangevinInference:
    """K steps of Eq. 8 from N(0, I); noise row 0 is the chain start, rows 1..K the step noise.

    The chains of all micro-batches of a step run together, `runner.batch` at a time (learning keeps
    its micro-batch): each chain depends only on its own sample and noise, so only the float
    reduction order can change. Not for a batch-coupled generator (BatchNorm in training mode),
    whose chains run per micro-batch, as its learning does."""

    def __init__(self, cfg: Config, runner: ChainRunner):
        self.lv, self.runner = cfg.langevin, runner
        self.chain_batch = runner.batch

    def noise_shape(self, nz: int) -> tuple[int, ...]:
        return (self.lv.num_steps + 1, nz)

    def infer_step(
        self, plain: LFBM, batches: list[Batch], noises: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        if batch_coupled(plain.generator) or len({b.mask is None for b in batches}) > 1:
            return [self.infer(plain, b, n) for b, n in zip(batches, noises)]
        whole = Batch(
            x=torch.cat([b.x for b in batches]) if len(batches) > 1 else batches[0].x,
            positions=[p for b in batches for p in b.positions],
            mask=None if batches[0].mask is None else torch.cat([b.mask for b in batches]),
        )
        latents, stats = self.infer(plain, whole, torch.cat(noises) if len(noises) > 1 else noises[0], self.runner)
        sizes = [len(b.x) for b in batches]
        # One statistic for the step, given to every micro-batch: their tick mean is the step's.
        return [(z, stats) for z in latents.split(sizes)]

    def infer(
        self, plain: LFBM, batch: Batch, noise: torch.Tensor, runner: ChainRunner | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch's chains, all at once (runner: the step's, chain_batch at a time)."""
        lv = self.lv
        return langevin_posterior(
            plain.generator,
            plain.prior,
            batch.x,
            num_steps=lv.num_steps,
            step_size=lv.step_size,
            sigma=lv.sigma,
            mask=batch.mask,
            z_init=noise[:, 0],
            noise=noise[:, 1:],
            add_noise=lv.add_noise,
            runner=runner or self.runner.with_batch(None),
            return_stats=True,
        )


class AmortizedInference:
    """LFBM-VAE: the encoder's q(z | x) is sampled inside the learning step (it is trained there, by the
    negative ELBO), so inference only hands over the reparameterisation noise ε."""

    def noise_shape(self, nz: int) -> tuple[int, ...]:
        return (nz,)

    def infer(self, plain: LFBM, batch: Batch, noise: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return noise, {}

    def infer_step(
        self, plain: LFBM, batches: list[Batch], noises: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        return [self.infer(plain, b, n) for b, n in zip(batches, noises)]


def latent_inference(cfg: Config, runner: ChainRunner) -> LatentInference:
    """runner: how a step's chains run (its batch: chains per call)."""
    if cfg.inference.kind == "vae":
        return AmortizedInference()
    return LangevinInference(cfg, runner)
