"""How a batch of Langevin chains runs — one runner for training, test-time inference, inpainting,
image grids and the benchmarks, eager or compiled.

The compiled unit is ONE Langevin step (`posterior_step`): one graph for every step of every chain
of a shape, so compile time does not grow with K (regional compilation, as torchtitan compiles one
block reused across layers). A chain is a loop over that step:
  * on CUDA, with the default modes, the K calls are captured once as ONE `torch.cuda.CUDAGraph`
    per chain shape and K (static inputs copied in, outputs copied out): a chain is one replay, no
    host round trip and no kernel launch per step;
  * under modes that record CUDA graphs themselves (reduce-overhead, max-autotune: CUDA-graph trees)
    each step is one replay of the step's graph, marked as a new step and its outputs copied;
  * on CPU, K calls of the compiled step.

`ChainRunner` owns everything that decides which graph a chain meets, so the set of graphs a run
compiles is small and known: the chain batch (every compiled call gets exactly `batch` chains, the
last chunk padded with copies of its last chain), the memory format of images and masks, contiguous
noise per step, float32 latents and the autocast dtype — the graph's signature (graphs.signature).

Building, counting and replaying those graphs, and telling a compiler failure (eager fallback) from
an out-of-memory while recording (chain batch halved) and a run error (the run stops): graphs.py.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from .graphs import GRAPHS, BatchTooLarge, ChainRunError, GraphUse, first_line, graph_use
from .langevin import Prior, batch_coupled, frozen, posterior_steps

log = logging.getLogger("lfbm_dist")


@dataclass(frozen=True)
class ChainRunner:
    """How chains run. compile_mode None = the eager step loop (the reference); otherwise the
    torch.compile mode of the one-step graph. batch: chains per call (None: the caller's whole batch;
    compiled calls are padded to it). channels_last: images and masks in NHWC (the generator's
    format on CUDA). autocast_dtype: the generator's autocast. capture: on CUDA, record each chain as
    one CUDA graph around the compiled step (modes that record graphs themselves never capture)."""

    compile_mode: str | None = None
    batch: int | None = None
    channels_last: bool = False
    autocast_dtype: torch.dtype | None = None
    capture: bool = False

    def with_batch(self, batch: int | None) -> ChainRunner:
        return dataclasses.replace(self, batch=batch)

    def run(
        self,
        generator: nn.Module,
        prior: Prior,
        x: torch.Tensor,
        z_init: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        num_steps: int,
        step_size: float,
        sigma: float,
        mask: torch.Tensor | None = None,
        add_noise: bool = True,
        rng: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chains of x from z_init: (z_K (B, nz) detached, per-sample ‖∇‖ at the last step (B,)).
        noise (B, K, nz) or None (drawn from rng, in the step loop's order, when add_noise)."""
        batch = x.shape[0]
        coupled = batch_coupled(generator)  # BatchNorm in training mode: neither re-batched nor graphed
        compiled = self.compile_mode is not None and not coupled
        if add_noise and noise is None and (compiled or (self.batch or batch) < batch):
            # Drawn up front in the step loop's order (z_init first, then step by step): the same chains.
            steps = [torch.randn(z_init.shape, generator=rng, device=x.device) for _ in range(num_steps)]
            noise = torch.stack(steps, 1) if steps else z_init.new_zeros(batch, 0, z_init.shape[1])
        args = (generator, prior, x, z_init, noise if add_noise else None, num_steps, step_size, sigma, mask, rng)
        while True:
            chunk = batch if (coupled or not self.batch) else self.batch
            if compiled and GRAPHS.batch_cap is not None:
                chunk = min(chunk, GRAPHS.batch_cap)
            try:
                return self._chains(*args, chunk=chunk, compiled=compiled, add_noise=add_noise)
            except BatchTooLarge as exc:
                _halve(exc)

    def _chains(self, generator, prior, x, z_init, noise, num_steps, step_size, sigma, mask, rng, *, chunk, compiled,
                add_noise):  # fmt: skip
        use = graph_use(self.compile_mode, x.device.type, self.capture) if compiled else GraphUse()
        zs, norms = [], []
        with frozen(generator, prior if isinstance(prior, nn.Module) else None):  # once for all the chunks
            for x_, z_, noise_, mask_, real in self._chunks(x, z_init, noise, mask, chunk, compiled):
                if compiled:
                    # Step k's noise contiguous (K, B, nz): every step meets the same graph.
                    noise_k = noise_.transpose(0, 1).contiguous() if noise_ is not None else None
                    step_args = (generator, prior, x_, z_, None, step_size, sigma, mask_, self.autocast_dtype)
                    z, grad_norm = GRAPHS.chain(self.compile_mode, use, step_args, noise_k, num_steps)
                else:
                    z, grad_norm = posterior_steps(
                        generator, prior, x_, z_, noise_, num_steps, step_size, sigma, mask_, self.autocast_dtype,
                        add_noise=add_noise, rng=rng,
                    )  # fmt: skip
                zs.append(z[:real])
                norms.append(grad_norm[:real])
        return (torch.cat(zs), torch.cat(norms)) if len(zs) > 1 else (zs[0], norms[0])

    def _chunks(self, x, z_init, noise, mask, chunk: int, pad: bool):
        """(x, z, noise, mask, real rows) per chunk of `chunk` chains, laid out as the graphs expect;
        with pad, a last, smaller chunk is padded with copies of its last chain (a graph's static shape)."""
        batch = x.shape[0]
        per_row = mask is not None and mask.dim() == x.dim() and mask.shape[0] == batch and batch > 1
        x, mask = self._layout(x), self._layout(mask)
        for start in range(0, batch, chunk):
            rows = slice(start, min(start + chunk, batch))
            x_, z_, noise_ = x[rows], z_init[rows], noise[rows] if noise is not None else None
            mask_ = mask[rows] if per_row else mask
            real = x_.shape[0]
            if pad and real < chunk:
                x_, z_ = self._layout(_pad_rows(x_, chunk)), _pad_rows(z_, chunk)
                noise_ = _pad_rows(noise_, chunk) if noise_ is not None else None
                mask_ = self._layout(_pad_rows(mask_, chunk)) if per_row else mask_
            yield x_, z_.detach().float().contiguous(), noise_, mask_, real

    def _layout(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """Images and masks contiguous in the runner's memory format (so are padded chunks)."""
        if t is None:
            return None
        if self.channels_last and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t.contiguous()


EAGER = ChainRunner()


def _halve(exc: BatchTooLarge) -> None:
    """Out of memory while recording: the process's chain batch halves and the graph is recorded again."""
    if exc.batch <= 1:
        raise ChainRunError(f"out of memory recording a Langevin chain of one: {first_line(exc.cause)}") from exc
    GRAPHS.batch_cap = exc.batch // 2
    GRAPHS.release()  # the old graphs' pool first: the smaller graph is recorded into free memory
    log.warning(
        "out of memory while recording a Langevin chain graph of %d chains; the chain batch is halved to %d "
        "and the graph recorded again (set perf.chain_batch to choose it)",
        exc.batch,
        GRAPHS.batch_cap,
    )


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])])


def langevin_posterior(
    generator: nn.Module,
    prior: Prior,
    x: torch.Tensor,
    *,
    num_steps: int,
    step_size: float,
    sigma: float,
    mask: torch.Tensor | None = None,
    z_init: torch.Tensor | None = None,
    add_noise: bool = True,
    noise: torch.Tensor | None = None,
    rng: torch.Generator | None = None,
    runner: ChainRunner = EAGER,
    return_stats: bool = False,
):
    """K steps of Eq. 8 on log p(z | x); chains start at z_init, else at N(0, I).

    x: (B, C, H, W) in the generator's range; mask: broadcastable to x, 1 = visible.
    noise: optional (B, K, nz) pre-drawn ε (the trainer derives it from per-sample seeds so that
    a global batch gives the same chains on any number of ranks); else drawn from `rng`.
    runner: how the chains run (eager by default; chains are independent, so chunking them or
    compiling them changes only the float reduction order). Returns z (B, nz) detached, and with
    return_stats a dict of device tensors (no host sync).
    """
    if num_steps < 0 or step_size <= 0 or sigma <= 0:
        raise ValueError(f"need num_steps >= 0, step_size > 0, sigma > 0; got {num_steps}, {step_size}, {sigma}")
    batch, nz = x.shape[0], generator.nz
    if z_init is None:
        z_init = torch.randn(batch, nz, generator=rng, device=x.device)
    if add_noise and noise is not None and tuple(noise.shape) != (batch, num_steps, nz):
        raise ValueError(f"noise must have shape {(batch, num_steps, nz)}, got {tuple(noise.shape)}")
    z, grad_norm = runner.run(
        generator,
        prior,
        x,
        z_init,
        noise if add_noise else None,
        num_steps=num_steps,
        step_size=step_size,
        sigma=sigma,
        mask=mask,
        add_noise=add_noise,
        rng=rng,
    )
    if return_stats:
        return z, {"langevin_grad_norm": grad_norm.mean()}
    return z
