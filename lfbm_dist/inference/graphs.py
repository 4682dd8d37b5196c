"""The compiled Langevin step of a process and the CUDA graphs recorded around it (chain.py's
`ChainRunner` decides which graph a chain meets; this module builds, counts and replays them).

`GRAPHS`, one per process as Dynamo's own cache is, holds the compiled step (`posterior_step`), counts
the graphs torch.compile builds for it (its own counter) and the chains recorded as CUDA graphs, and
tells failures apart:
  * a compiler error (at any graph) costs one warning line and the eager step loop (the same math)
    for the rest of the process, never the run; a signature past Dynamo's recompile limit runs eagerly;
  * out of memory while a chain graph is recorded: one warning, the chain batch halved (every later
    call of the process too), the old graphs' memory pool freed, and the graph recorded again;
  * any other error while compiled code runs (a CUDA error) stops the run with that cause as its
    first error line — never a silent switch to eager.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import private_apis
from ..errors import LfbmError
from .langevin import posterior_step, posterior_steps

log = logging.getLogger("lfbm_dist")


class ChainRunError(LfbmError, RuntimeError):
    """Compiled Langevin code failed while running (not while compiling): the run stops with the cause."""


class BatchTooLarge(Exception):
    """Out of memory while recording a chain graph of `batch` chains (ChainRunner halves and retries)."""

    def __init__(self, batch: int, cause: BaseException):
        super().__init__(f"out of memory recording a Langevin chain graph of {batch} chains")
        self.batch, self.cause = batch, cause


@dataclass(frozen=True)
class GraphUse:
    """How a compiled chain uses CUDA graphs; the rule is `graph_use` (unit-tested for every mode).
    trees: the compiled mode records a CUDA graph per call (CUDA-graph trees) — every step is marked
    as a new step and its outputs copied out before the next replay overwrites them.
    capture: the whole chain is captured as one explicit CUDA graph — its outputs are copied out of
    the graph's static buffers after each replay."""

    trees: bool = False
    capture: bool = False

    @property
    def mark_steps(self) -> bool:
        return self.trees

    @property
    def copy_outputs(self) -> bool:
        return self.trees or self.capture


def graph_use(mode: str | None, device_type: str, capture: bool) -> GraphUse:
    """The CUDA-graph decision, from whether the compiled mode records graphs, not from its name."""
    if mode is None or device_type != "cuda":
        return GraphUse()
    if private_apis.mode_records_cuda_graphs(mode):
        return GraphUse(trees=True)  # a capture around graphs that record themselves is not allowed
    return GraphUse(capture=capture)


def _tensor_signature(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (tuple(t.shape), t.stride(), t.dtype, str(t.device))


def signature(mode: str, args: tuple) -> tuple:
    """The graph a compiled step call needs: what Dynamo guards on among its inputs (shapes, strides,
    dtypes, noise?, mask?, the float constants, autocast). The networks are graph inputs (Dynamo
    inlines nn.Modules), and a compiled chain never runs a module in training mode (BatchNorm there
    is batch-coupled and runs eagerly), so neither enters the signature. K does not either."""
    _, _, x, z, eps, step_size, sigma, mask, autocast_dtype = args
    tensors = tuple(_tensor_signature(t) for t in (x, z, eps, mask))
    return (mode, tensors, step_size, sigma, autocast_dtype)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen = 0
    while exc is not None and seen < 8:  # the compiler wraps what it met (BackendCompilerFailed)
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@dataclass
class _Recorded:
    """One chain captured as a CUDA graph: its static inputs, outputs and the weights it reads."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple  # (x, z, noise (K, B, nz) or None, mask or None): copied into before each replay
    outputs: tuple[torch.Tensor, torch.Tensor]
    weights: tuple[int, ...]  # data_ptr of every parameter and buffer the graph reads


class ChainGraphs:
    """The compiled Langevin step of this process (one torch.compile per mode), the signatures it has
    run, the graphs torch.compile built (its own counter), the chains recorded as CUDA graphs, the
    chain-batch cap an out-of-memory set, and the compiler failure that sent every chain back to the
    eager loop, if one did. Hooks (None in production; the fault tests' seams, training/hooks.py):
    `before_compile(ordinal)` before the ordinal-th graph is compiled, inside the fallback;
    `before_record(batch)` before a chain graph of `batch` chains is recorded (compiled or captured)."""

    def __init__(self) -> None:
        self.signatures: set[tuple] = set()
        self.graphs_compiled = 0
        self.fallback_reason: str | None = None
        self.eager_over_limit = 0
        self.from_cache = 0  # graphs whose code Inductor found in its cache (compile_cache.py)
        self.autograd_cache_hits = 0  # graphs whose AOTAutograd work came from the cache too
        self.cudagraph_skips = 0
        self.cuda_graphs_recorded = 0
        self.batch_cap: int | None = None  # set by an out-of-memory while recording
        self.before_compile: Callable[[int], None] | None = None
        self.before_record: Callable[[int], None] | None = None
        self._compiled: dict[str, Callable] = {}
        self._recorded: dict[tuple, _Recorded] = {}
        self._pool = None  # one memory pool for every recorded chain (replayed one at a time)

    # ------------------------------------------------------------------ a chain
    def chain(self, mode: str, use: GraphUse, args: tuple, noise: torch.Tensor | None, num_steps: int):
        """One chunk's chain; args = posterior_step's arguments with eps=None, noise (K, B, nz)."""
        if self.fallback_reason is not None:
            return self._eager(args, noise, num_steps)
        if num_steps == 0:
            return args[3], args[3].new_zeros(args[3].shape[0])
        if use.capture:
            return self._replay(mode, args, noise, num_steps)
        generator, prior, x, z, _, *rest = args
        grad_norm = z.new_zeros(z.shape[0])
        for k in range(num_steps):
            step_args = (generator, prior, x, z, noise[k] if noise is not None else None, *rest)
            if self.fallback_reason is not None:  # a later graph failed to compile: finish eagerly
                rest_noise = noise[k:] if noise is not None else None
                return self._eager((generator, prior, x, z, None, *rest), rest_noise, num_steps - k)
            z, grad_norm = self._step(mode, use, step_args)
        return z, grad_norm

    def _eager(self, args: tuple, noise: torch.Tensor | None, num_steps: int):
        generator, prior, x, z, _, step_size, sigma, mask, autocast_dtype = args
        noise_bkn = noise.transpose(0, 1) if noise is not None else None  # the step loop's (B, K, nz)
        return posterior_steps(generator, prior, x, z, noise_bkn, num_steps, step_size, sigma, mask, autocast_dtype)

    # ------------------------------------------------------------------ one compiled step
    def _step(self, mode: str, use: GraphUse, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        sig = signature(mode, args)
        new = sig not in self.signatures
        if new and self.graphs_compiled >= private_apis.recompile_limit():
            # Dynamo would stop compiling this function (under fullgraph: raise); stay eager for it.
            if not self.eager_over_limit:
                log.warning("more Langevin step shapes than torch.compile keeps graphs for; new ones run eagerly")
            self.eager_over_limit += 1
            return self._eager(args, args[4][None] if args[4] is not None else None, 1)
        if use.mark_steps:
            # The previous replay's outputs were copied out below; their buffers may be reused.
            torch.compiler.cudagraph_mark_step_begin()
        counted = self._counters()
        try:
            if new and self.before_record is not None:
                self.before_record(args[2].shape[0])  # a new graph: compiled (and recorded) next
            if new and self.before_compile is not None:
                self.before_compile(self.graphs_compiled + 1)
            with torch.no_grad():
                z, grad_norm = self._fn(mode)(*args)
        except Exception as exc:  # noqa: BLE001 — sorted: compiler failure, out of memory, or a run error
            self._failed(exc, new, args[2].shape[0])
            return self._eager(args, args[4][None] if args[4] is not None else None, 1)
        self._count(counted)
        if new:
            self.signatures.add(sig)
            self._check_cudagraphs(use)
        if use.copy_outputs and not use.capture:
            # A CUDA-graph output lives in the graph's pool and is overwritten by its next replay.
            z, grad_norm = z.clone(), grad_norm.clone()
        return z, grad_norm

    def _failed(self, exc: Exception, compiling: bool, batch: int) -> None:
        """Sort a failure of a compiled call: out of memory → BatchTooLarge (the batch halves); a CUDA
        error, or any error of a graph that had compiled → ChainRunError (the run stops with it); a
        compiler failure → the eager loop for the rest of the process."""
        if _caused_by(exc, torch.OutOfMemoryError):
            raise BatchTooLarge(batch, exc) from exc
        if _cuda_error(exc) or not (compiling or isinstance(exc, private_apis.compiler_error_types())):
            raise ChainRunError(f"the compiled Langevin chain failed while running: {first_line(exc)}") from exc
        self._fall_back(exc)

    def _counters(self) -> tuple[int, int, int]:
        return (
            private_apis.dynamo_counter("stats", "unique_graphs"),
            private_apis.dynamo_counter("inductor", "fxgraph_cache_hit"),
            private_apis.dynamo_counter("aot_autograd", "autograd_cache_hit"),
        )

    def _count(self, before: tuple[int, int, int]) -> None:
        graphs, hits, aot_hits = (now - then for now, then in zip(self._counters(), before))
        self.graphs_compiled += graphs
        self.from_cache += hits
        self.autograd_cache_hits += aot_hits

    # ------------------------------------------------------------------ the chain as one CUDA graph
    def _replay(self, mode: str, args: tuple, noise: torch.Tensor | None, num_steps: int):
        generator, prior, x, z, _, step_size, sigma, mask, autocast_dtype = args
        key = (signature(mode, args), num_steps, noise is not None)
        weights = _weight_pointers(generator, prior)
        rec = self._recorded.get(key)
        if rec is None or rec.weights != weights:  # a weight moved (re-bound, not updated in place)
            rec = self._record(mode, key, args, noise, num_steps, weights)
            if rec is None:  # fell back while compiling
                return self._eager(args, noise, num_steps)
        for static, value in zip(rec.inputs, (x, z, noise, mask)):
            if static is not None:
                static.copy_(value)
        try:
            rec.graph.replay()
        except Exception as exc:  # noqa: BLE001
            raise ChainRunError(f"a recorded Langevin chain failed while running: {first_line(exc)}") from exc
        return rec.outputs[0].clone(), rec.outputs[1].clone()  # the next replay overwrites them

    def _record(self, mode: str, key: tuple, args: tuple, noise, num_steps: int, weights) -> _Recorded | None:
        generator, prior, x, z, _, *rest = args
        mask = rest[2]
        inputs = tuple(t.clone() if t is not None else None for t in (x, z, noise, mask))
        sx, sz, snoise, smask = inputs
        step_args = (generator, prior, sx, sz, None, rest[0], rest[1], smask, rest[3])
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and warm up off the capture stream, as capture requires
            eps = snoise[0] if snoise is not None else None
            self._step(mode, GraphUse(), (*step_args[:4], eps, *step_args[5:]))
        torch.cuda.current_stream().wait_stream(side)
        if self.fallback_reason is not None:
            return None
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the DataLoader's pin-memory thread and the snapshot writer go on calling
            # CUDA while this thread captures (the global mode would invalidate the capture)
            with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                zz, grad_norm = sz, sz.new_zeros(sz.shape[0])
                for k in range(num_steps):
                    eps = snoise[k] if snoise is not None else None
                    zz, grad_norm = self._fn(mode)(*step_args[:3], zz, eps, *step_args[5:])
        except Exception as exc:  # noqa: BLE001
            del graph
            if _caused_by(exc, torch.OutOfMemoryError):
                raise BatchTooLarge(x.shape[0], exc) from exc
            raise ChainRunError(f"recording the Langevin chain as a CUDA graph failed: {first_line(exc)}") from exc
        self._pool = graph.pool()
        self.cuda_graphs_recorded += 1
        self._recorded[key] = _Recorded(graph, inputs, (zz, grad_norm), weights)
        return self._recorded[key]

    @contextlib.contextmanager
    def hooked(self, before_compile: Callable[[int], None] | None = None, before_record=None):
        """These hooks for the duration (a test's seam; the trainer sets the run's from training/hooks.py),
        the previous ones and the chain-batch cap restored after."""
        saved = self.before_compile, self.before_record, self.batch_cap
        self.before_compile, self.before_record = before_compile, before_record
        try:
            yield self
        finally:
            self.before_compile, self.before_record, self.batch_cap = saved

    def reset(self) -> None:
        """Forget every graph (with torch._dynamo.reset(): a benchmark's next variant compiles afresh)."""
        hooks = self.before_compile, self.before_record
        self.__init__()
        self.before_compile, self.before_record = hooks

    def release(self) -> None:
        """Drop every recorded chain and its memory pool (after an out-of-memory, before a smaller batch)."""
        self._recorded.clear()
        self._pool = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ accounting
    def summary(self) -> str:
        """The end line's account of the compiled chains: graphs built, CUDA graphs, any fallback."""
        if not self.signatures and self.fallback_reason is None:
            return "Langevin chain graphs compiled: 0"
        text = f"Langevin chain graphs compiled: {self.graphs_compiled}"
        text += f"; fell back to eager: {self.fallback_reason}" if self.fallback_reason else "; no fallback"
        if self.from_cache:
            text += f"; {self.from_cache} of them from the compile cache"
            if self.autograd_cache_hits:
                text += f" ({self.autograd_cache_hits} with AOTAutograd's work cached too)"
        if self.cuda_graphs_recorded:
            text += f"; {self.cuda_graphs_recorded} chain(s) recorded as one CUDA graph each"
        if self.batch_cap is not None:
            text += f"; chain batch halved to {self.batch_cap} (out of memory while recording)"
        if self.eager_over_limit:
            text += f"; {self.eager_over_limit} step call(s) eager past the recompile limit"
        return text

    def _fn(self, mode: str) -> Callable:
        if mode not in self._compiled:
            private_apis.cache_graphs_with_autocast()  # a warm compile cache is then warm (bf16 steps)
            self._compiled[mode] = torch.compile(posterior_step, mode=mode, dynamic=False, fullgraph=True)
        return self._compiled[mode]

    def _fall_back(self, exc: Exception) -> None:
        self.fallback_reason = f"{type(exc).__name__}: {first_line(exc)}".rstrip(": ")
        graph = self.graphs_compiled + 1
        log.warning("torch.compile failed at chain graph %d (%s); Langevin runs eagerly", graph, self.fallback_reason)
        self.release()

    def _check_cudagraphs(self, use: GraphUse) -> None:
        if not use.trees:
            return
        skips = private_apis.dynamo_counter("inductor", "cudagraph_skips")
        if skips > self.cudagraph_skips:
            log.warning(
                "CUDA graphs were skipped for a Langevin step graph (TORCH_LOGS=perf_hints says why); "
                "it runs compiled without them"
            )
        self.cudagraph_skips = skips


GRAPHS = ChainGraphs()  # per process, as Dynamo's cache of the compiled function is


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else ""


# What a CUDA error says, whichever exception carries it (torch.AcceleratorError from torch 2.8 on).
_CUDA_ERRORS = ("CUDA error", "CUDA driver error", "cuDNN error", "CUBLAS_STATUS_", "CUDNN_STATUS_")


def _cuda_error(exc: BaseException) -> bool:
    if _caused_by(exc, getattr(torch, "AcceleratorError", ())):
        return True
    seen = 0
    while exc is not None and seen < 8:
        if any(marker in str(exc) for marker in _CUDA_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _weight_pointers(*modules) -> tuple[int, ...]:
    """Where every parameter and buffer lives: a recorded graph reads them at these addresses (an
    optimizer's in-place update is seen by the next replay; a re-bound tensor would not be)."""
    return tuple(t.data_ptr() for m in modules if isinstance(m, nn.Module) for t in (*m.parameters(), *m.buffers()))
