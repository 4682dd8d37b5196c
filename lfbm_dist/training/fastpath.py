"""The GPU fast path of the iteration, resolved once from `cfg.perf` and the device.

Langevin inference is ≈ 97 % of an iteration at 256² (K = 60 generator forward + input-gradient
passes per image), so this is where speed is won. What is here, and why each is a switch:

* channels-last (NHWC) generator weights and images: cuDNN's tensor-core convolution kernels
  want NHWC; in NCHW every bf16 convolution pays two layout transposes.
* cuDNN autotuning: shapes never change within a run (fixed chain batch and resolution), so
  the one-off search at the first step is paid back on every later one.
* torch.compile of the whole Langevin chain (`perf.chain_graph=whole`, lfbm_dist.inference's
  `posterior_chain`): the K input gradients (torch.func.grad), updates and noise of a chain are one
  graph, and with mode "reduce-overhead" one CUDA-graph replay — no Python, no host round trip and
  no kernel launch per step. The H100 reading (docs/PERFORMANCE.md) showed the step launch-bound:
  compiling only the log-posterior left one replay and an eager update per step (5.2× plain eager);
  `chain_graph=step` keeps that form for comparison.
* the chain batch: Langevin is per-sample and collective-free, so the chains of all micro-batches
  of a step run as one large batch (the trainer concatenates them) while learning keeps its
  micro-batch; every call gets exactly `chain_batch` chains (padded), so a graph never recompiles.

`auto` = on for CUDA, off on CPU (where docs/PERFORMANCE.md measured no gain). If compilation
fails (no C++ compiler, an unsupported torch version), the run says so once and continues eagerly
with the same math; if CUDA graphs are skipped, the start-up line says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import ConfigError, PerfConfig
from ..inference import ChainFn, ChainOptions, LogPosteriorFn, log_posterior, posterior_chain, posterior_steps


def _on(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def chunked_steps(num_steps: int, graph_steps: int) -> list[int]:
    """A chain of num_steps as graph segments: full graph_steps ones and one remainder, so a run
    compiles at most two graphs per shape however long its chains are."""
    full, rest = divmod(num_steps, graph_steps)
    return [graph_steps] * full + ([rest] if rest else [])


def chain_batch_from_memory(
    step_batch: int, micro_batch: int, bytes_per_chain: int, free_bytes: int, fraction: float = 0.5
) -> int:
    """The largest chain batch that runs a step's chains in equal whole-micro-batch chunks and fits
    `fraction` of free memory (at least one micro-batch: that is what learning needs anyway)."""
    fits = int(free_bytes * fraction) // max(1, bytes_per_chain)
    micro_batches = step_batch // micro_batch
    for chunks in range(1, micro_batches + 1):
        if micro_batches % chunks == 0 and step_batch // chunks <= fits:
            return step_batch // chunks
    return micro_batch


def chain_bytes_per_sample(generator: nn.Module, nz: int) -> int:
    """Memory one chain needs, estimated from the generator's activations: every module output of one
    forward pass (on the meta device: no memory, no compute), × 3 for the input gradient's backward
    and its temporaries, in float32 (the worst case; bf16 autocast halves most of it)."""
    import copy

    meta = copy.deepcopy(generator).to("meta")
    total = [0]
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: total.__setitem__(0, total[0] + out.numel()))
        for m in meta.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            meta(torch.zeros(1, nz, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return 3 * 4 * total[0]


@dataclass
class FastPath:
    device: torch.device
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile_mode: str | None = None  # None = eager
    chain_graph: str = "whole"  # "whole": the K-step chain is one graph; "step": the log-posterior is
    graph_steps: int = 20
    chain_batch_setting: int = 0  # perf.chain_batch (0 = auto)
    fallback_reason: str | None = None  # set when compilation failed and we went eager
    note: str | None = None  # why an `auto` switch stayed off
    cudagraph_skips: int = 0
    _compiled: LogPosteriorFn | None = field(default=None, repr=False)
    _compiled_chain: ChainFn | None = field(default=None, repr=False)
    _checked_shapes: set = field(default_factory=set, repr=False)

    @classmethod
    def resolve(cls, perf: PerfConfig, device: torch.device, deepspeed: bool = False) -> FastPath:
        """deepspeed: the model will be handed to a DeepSpeed engine, which views every parameter
        as contiguous bytes (broadcast at start-up, flat ZeRO buffers): NHWC weights crash it."""
        compile_on = _on(perf.compile, device)
        mode = perf.compile_mode
        if mode == "auto":
            mode = "reduce-overhead" if device.type == "cuda" else "default"
        # CUDA graphs need CUDA; on CPU "reduce-overhead" would silently be plain compilation.
        if device.type != "cuda" and mode == "reduce-overhead":
            mode = "default"
        channels_last, note = _on(perf.channels_last, device), None
        if deepspeed and channels_last:
            if perf.channels_last == "on":
                raise ConfigError(
                    "perf.channels_last=on cannot run under DeepSpeed (it views every parameter as "
                    "contiguous bytes); use perf.channels_last=auto or off"
                )
            channels_last, note = False, "channels-last stays off under DeepSpeed"
        return cls(
            device=device,
            channels_last=channels_last,
            cudnn_benchmark=_on(perf.cudnn_benchmark, device) and device.type == "cuda",
            compile_mode=mode if compile_on else None,
            chain_graph=perf.chain_graph,
            graph_steps=perf.graph_steps,
            chain_batch_setting=perf.chain_batch,
            note=note,
        )

    def describe(self) -> str:
        compiled = self.compile_mode is not None
        chain = f"whole chain ≤ {self.graph_steps} steps/graph" if self.chain_graph == "whole" else "per step"
        parts = [
            f"channels_last={'on' if self.channels_last else 'off'}",
            f"cudnn_benchmark={'on' if self.cudnn_benchmark else 'off'}",
            f"compile={self.compile_mode or 'off'}" + (f" ({chain})" if compiled else ""),
        ]
        if self.compile_mode == "reduce-overhead":
            parts.append("cuda_graphs=on")
        if self.note:
            parts.append(f"({self.note})")
        if self.fallback_reason:
            parts.append(f"(compile fell back to eager: {self.fallback_reason})")
        if self.cudagraph_skips:
            parts.append(f"(CUDA graphs skipped {self.cudagraph_skips}×: TORCH_LOGS=perf_hints says why)")
        return " ".join(parts)

    def apply(self, model: nn.Module) -> nn.Module:
        """Process-wide and module settings; call before the model is wrapped (DDP/DeepSpeed)."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # only 4-D tensors (conv weights) change
        return model

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the generator's memory format, so the residual x − g(z) needs no transpose."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def chain_batch(self, micro_batch: int, step_batch: int, generator: nn.Module, nz: int) -> int:
        """Chains per call for a step of step_batch chains learned in micro_batch pieces.
        Explicit setting > auto: CUDA = the whole step, capped by free memory; CPU = one micro-batch
        (nothing is launch-bound there, and the CPU numerics stay those of the micro-batch)."""
        if self.chain_batch_setting:
            return self.chain_batch_setting
        if self.device.type != "cuda":
            return micro_batch
        free_bytes, _ = torch.cuda.mem_get_info(self.device)  # host query, once per resolve
        return chain_batch_from_memory(step_batch, micro_batch, chain_bytes_per_sample(generator, nz), free_bytes)

    def test_time_chain(self, batch: int) -> ChainOptions:
        """Evaluation's chains (reconstruction, inpainting, anomaly, aggregated posterior, image grids):
        the same compiled chain, `batch` chains per call (perf.chain_batch if set), every call padded
        to that size so a last, smaller batch does not compile a new graph."""
        return ChainOptions(self.chain_fn, self.chain_batch_setting or batch)

    @property
    def log_posterior(self) -> LogPosteriorFn | None:
        """The function langevin_posterior should call per step (None = its eager default)."""
        if self.compile_mode is None or self.chain_graph != "step":
            return None
        if self._compiled is None:
            compiled = torch.compile(log_posterior, mode=self.compile_mode, dynamic=False)
            self._compiled = self._with_fallback(compiled)
        return self._compiled

    @property
    def chain_fn(self) -> ChainFn | None:
        """The whole-chain function langevin_posterior should call (None = the step loop, also after
        a compile failure)."""
        if self.compile_mode is None or self.chain_graph != "whole":
            return None
        if self._compiled_chain is None:
            self._compiled_chain = torch.compile(posterior_chain, mode=self.compile_mode, dynamic=False, fullgraph=True)
        return self._run_chain

    def _run_chain(self, generator, prior, x, z, noise, num_steps, step_size, sigma, mask, autocast_dtype):
        """The chain in graph_steps segments (one graph replay each), falling back to eager on failure."""
        grad_norm = z.new_zeros(z.shape[0])
        done = 0
        for steps in chunked_steps(num_steps, self.graph_steps):
            seg_noise = noise[:, done : done + steps] if noise is not None else None
            args = (generator, prior, x, z, seg_noise, steps, step_size, sigma, mask, autocast_dtype)
            z, grad_norm = self._call_graph(args)
            done += steps
        return z, grad_norm

    def _call_graph(self, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compile_mode is None:  # fell back earlier: the eager reference, exactly
            return posterior_steps(*args)
        key = (tuple(args[2].shape), args[5], args[4] is not None, args[8] is not None)
        if self.compile_mode == "reduce-overhead":
            # The previous replay's outputs were copied out below; their buffers may be reused.
            torch.compiler.cudagraph_mark_step_begin()
        if key in self._checked_shapes:
            z, grad_norm = self._compiled_chain(*args)
        else:
            try:  # the first call of a shape compiles (and captures the CUDA graph)
                z, grad_norm = self._compiled_chain(*args)
            except Exception as exc:  # noqa: BLE001 — any compiler failure: same math, eagerly
                self._fall_back(exc)
                return posterior_steps(*args)  # the eager step loop: the run is the eager run exactly
            self._checked_shapes.add(key)
            self.cudagraph_skips = _cudagraph_skips()
            if self.cudagraph_skips and self.compile_mode == "reduce-overhead":
                logging.getLogger("lfbm_dist").warning(
                    "CUDA graphs were skipped for the Langevin chain (TORCH_LOGS=perf_hints says why); "
                    "it runs compiled without them"
                )
        if self.compile_mode == "reduce-overhead":
            # A CUDA-graph output lives in the graph's pool and is overwritten by its next replay.
            z, grad_norm = z.clone(), grad_norm.clone()
        return z, grad_norm

    def _fall_back(self, exc: Exception) -> None:
        self.fallback_reason = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
            if str(exc).strip()
            else type(exc).__name__
        )
        logging.getLogger("lfbm_dist").warning("torch.compile failed (%s); Langevin runs eagerly", self.fallback_reason)
        self.compile_mode = None

    def _with_fallback(self, compiled: LogPosteriorFn) -> LogPosteriorFn:
        state = {"fn": compiled, "checked": False}

        def call(*args, **kwargs):
            if self.compile_mode == "reduce-overhead":
                # The previous step's CUDA-graph outputs are dead (z was already updated from them).
                torch.compiler.cudagraph_mark_step_begin()
            if state["checked"]:
                return state["fn"](*args, **kwargs)
            try:  # the first call compiles; later shapes recompile quietly under the same guard
                out = state["fn"](*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 — any compiler failure: same math, eagerly
                self._fall_back(exc)
                state["fn"] = log_posterior
                out = log_posterior(*args, **kwargs)
            state["checked"] = True
            return out

        return call


def _cudagraph_skips() -> int:
    """How many graphs Inductor declined to capture as CUDA graphs (its own counter; 0 if absent)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["inductor"].get("cudagraph_skips", 0))
    except Exception:  # noqa: BLE001 — a private counter: absence must not break training
        return 0
