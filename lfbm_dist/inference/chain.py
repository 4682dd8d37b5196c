"""How a batch of Langevin chains runs — one runner for training, test-time inference, inpainting,
image grids and the benchmarks, eager or compiled.

`ChainRunner` owns everything that decides which compiled graph a chain meets, so the set of graphs
a run compiles is small and known: the chain batch (every compiled call gets exactly `batch` chains,
the last chunk padded with copies of its last chain), the graph length (a K-step chain is
⌈K / graph_steps⌉ segments of at most two lengths), the memory format of images and masks (made
contiguous in the runner's format, padding included), contiguous noise segments, float32 latents
and the autocast dtype. Everything Dynamo guards on is therefore a function of (the call's shape,
K, noise?, mask?, autocast) — the graph's *signature* below — and nothing else.

`GRAPHS`, one per process as Dynamo's own cache is, holds the compiled function and counts the
graphs torch.compile builds for it. Every call of a compiled chain runs under its fallback: a
compiler error at any graph — the first or a later one — costs one warning line and the eager step
loop (the same math) for the rest of the process, never the run; a signature past Dynamo's
recompile limit runs eagerly instead of raising.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import private_apis
from .langevin import Prior, batch_coupled, frozen, posterior_chain, posterior_steps

log = logging.getLogger("lfbm_dist")


def chunked_steps(num_steps: int, graph_steps: int) -> list[int]:
    """A chain of num_steps as graph segments: full graph_steps ones and one remainder, so a run
    compiles at most two graphs per shape however long its chains are."""
    full, rest = divmod(num_steps, graph_steps)
    return [graph_steps] * full + ([rest] if rest else [])


def _tensor_signature(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (tuple(t.shape), t.stride(), t.dtype, str(t.device))


def signature(mode: str, args: tuple) -> tuple:
    """The graph a compiled chain call needs: what Dynamo guards on among the runner's inputs (shapes,
    strides, dtypes, K, noise?, mask?, the float constants, autocast). The networks are graph inputs
    (Dynamo inlines nn.Modules), and a compiled chain never runs a module in training mode (BatchNorm
    there is batch-coupled and runs eagerly), so neither enters the signature."""
    _, _, x, z, noise, steps, step_size, sigma, mask, autocast_dtype = args
    tensors = tuple(_tensor_signature(t) for t in (x, z, noise, mask))
    return (mode, tensors, steps, step_size, sigma, autocast_dtype)


class ChainGraphs:
    """The compiled chain graphs of this process: one torch.compile'd `posterior_chain` per mode, the
    signatures it has run, the graphs torch.compile built for them (its own counter, read around
    each call) and the compiler failure that sent every chain back to the eager step loop, if one
    did. `before_compile` (None in production) is the fault tests' hook: called with the ordinal
    (1, 2, …) of a graph about to be compiled, inside the fallback, as a compiler error would be."""

    def __init__(self) -> None:
        self.signatures: set[tuple] = set()
        self.graphs_compiled = 0
        self.fallback_reason: str | None = None
        self.eager_over_limit = 0
        self.from_cache = 0  # graphs whose code Inductor found in its cache (compile_cache.py)
        self.cudagraph_skips = 0
        self.before_compile: Callable[[int], None] | None = None
        self._compiled: dict[str, Callable] = {}

    def run(self, mode: str, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fallback_reason is not None:
            return posterior_steps(*args)
        sig = signature(mode, args)
        new = sig not in self.signatures
        if new and self.graphs_compiled >= private_apis.recompile_limit():
            # Dynamo would stop compiling this function (under fullgraph: raise); stay eager for it.
            if not self.eager_over_limit:
                log.warning("more Langevin chain shapes than torch.compile keeps graphs for; new ones run eagerly")
            self.eager_over_limit += 1
            return posterior_steps(*args)
        if mode == "reduce-overhead":
            # The previous replay's outputs were copied out below; their buffers may be reused.
            torch.compiler.cudagraph_mark_step_begin()
        before = private_apis.dynamo_counter("stats", "unique_graphs")
        hits_before = private_apis.dynamo_counter("inductor", "fxgraph_cache_hit")
        try:  # every call: a new signature compiles here, and a known one must not crash the run either
            if new and self.before_compile is not None:
                self.before_compile(self.graphs_compiled + 1)
            with torch.no_grad():
                z, grad_norm = self._fn(mode)(*args)
        except Exception as exc:  # noqa: BLE001 — any compiler failure: the same math, eagerly
            self._fall_back(exc)
            return posterior_steps(*args)  # the eager step loop: from here on the run is the eager run
        self.graphs_compiled += private_apis.dynamo_counter("stats", "unique_graphs") - before
        self.from_cache += private_apis.dynamo_counter("inductor", "fxgraph_cache_hit") - hits_before
        if new:
            self.signatures.add(sig)
            self._check_cudagraphs(mode)
        if mode == "reduce-overhead":
            # A CUDA-graph output lives in the graph's pool and is overwritten by its next replay.
            z, grad_norm = z.clone(), grad_norm.clone()
        return z, grad_norm

    def summary(self) -> str:
        """The end line's account of the compiled chains: graphs built, and any fallback."""
        if not self.signatures and self.fallback_reason is None:
            return "Langevin chain graphs compiled: 0"
        text = f"Langevin chain graphs compiled: {self.graphs_compiled}"
        text += f"; fell back to eager: {self.fallback_reason}" if self.fallback_reason else "; no fallback"
        if self.from_cache:
            text += f"; {self.from_cache} of them from the compile cache"
        if self.eager_over_limit:
            text += f"; {self.eager_over_limit} chain call(s) eager past the recompile limit"
        return text

    def _fn(self, mode: str) -> Callable:
        if mode not in self._compiled:
            self._compiled[mode] = torch.compile(posterior_chain, mode=mode, dynamic=False, fullgraph=True)
        return self._compiled[mode]

    def _fall_back(self, exc: Exception) -> None:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        self.fallback_reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        graph = self.graphs_compiled + 1
        log.warning("torch.compile failed at chain graph %d (%s); Langevin runs eagerly", graph, self.fallback_reason)

    def _check_cudagraphs(self, mode: str) -> None:
        if mode != "reduce-overhead":
            return
        skips = private_apis.dynamo_counter("inductor", "cudagraph_skips")
        if skips > self.cudagraph_skips:
            log.warning(
                "CUDA graphs were skipped for a Langevin chain graph (TORCH_LOGS=perf_hints says why); "
                "it runs compiled without them"
            )
        self.cudagraph_skips = skips


GRAPHS = ChainGraphs()  # per process, as Dynamo's cache of the compiled function is


@dataclass(frozen=True)
class ChainRunner:
    """How chains run. compile_mode None = the eager step loop (the reference); otherwise a
    torch.compile mode for `posterior_chain` in segments of at most graph_steps steps. batch: chains
    per call (None: the caller's whole batch; compiled calls are padded to it). channels_last: images
    and masks in NHWC (the generator's format on CUDA). autocast_dtype: the generator's autocast."""

    compile_mode: str | None = None
    graph_steps: int = 20
    batch: int | None = None
    channels_last: bool = False
    autocast_dtype: torch.dtype | None = None

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
        chunk = batch if (coupled or not self.batch) else self.batch
        if add_noise and noise is None and (compiled or chunk < batch):
            # Drawn up front in the step loop's order (z_init first, then step by step): the same chains.
            steps = [torch.randn(z_init.shape, generator=rng, device=x.device) for _ in range(num_steps)]
            noise = torch.stack(steps, 1) if steps else z_init.new_zeros(batch, 0, z_init.shape[1])
        zs, norms = [], []
        with frozen(generator, prior if isinstance(prior, nn.Module) else None):  # once for all the chunks
            for x_, z_, noise_, mask_, real in self._chunks(
                x, z_init, noise if add_noise else None, mask, chunk, compiled
            ):
                args = (generator, prior, x_, z_, noise_, num_steps, step_size, sigma, mask_, self.autocast_dtype)
                if compiled:
                    z, grad_norm = self._segments(args)
                else:
                    z, grad_norm = posterior_steps(*args, add_noise=add_noise, rng=rng)
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

    def _segments(self, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """The chain as graph_steps-long graphs, each with its own contiguous slice of the noise."""
        generator, prior, x, z, noise, num_steps, *rest = args
        grad_norm, done = z.new_zeros(z.shape[0]), 0
        for steps in chunked_steps(num_steps, self.graph_steps):
            seg_noise = noise[:, done : done + steps].contiguous() if noise is not None else None
            z, grad_norm = GRAPHS.run(self.compile_mode, (generator, prior, x, z, seg_noise, steps, *rest))
            done += steps
        return z, grad_norm

    def _layout(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """Images and masks contiguous in the runner's memory format (so are padded chunks)."""
        if t is None:
            return None
        if self.channels_last and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t.contiguous()


EAGER = ChainRunner()


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
