"""The GPU fast path of the iteration, resolved once from `cfg.perf` and the device.

Langevin inference is ≈ 97 % of an iteration at 256² (K = 60 generator forward + input-gradient
passes per image), so this is where speed is won. What is here, and why each is a switch:

* channels-last (NHWC) generator weights and images: cuDNN's tensor-core convolution kernels
  want NHWC; in NCHW every bf16 convolution pays two layout transposes.
* cuDNN autotuning: shapes never change within a run (fixed batch_per_gpu and resolution), so
  the one-off search at the first step is paid back on every later one.
* torch.compile of the Langevin log-posterior: Inductor fuses the element-wise tails (activation,
  residual, the flow's coupling arithmetic) of forward *and* backward — the backward is compiled
  by AOTAutograd because the gradient w.r.t. z is taken outside the compiled function
  (torch.autograd.grad cannot be captured whole, and does not need to be). mode
  "reduce-overhead" adds CUDA graphs, which removes the per-kernel launch cost of the K-step loop.

`auto` = on for CUDA, off on CPU. docs/PERFORMANCE.md records what each switch measured
(`benchmarks/bench_train_step.py --ablate`). If compilation fails (no C++ compiler, an
unsupported torch version), the run says so once and continues eagerly with the same math.
bf16 autocast (train.precision) and the no-weight-gradient chain are not switches: they are
always on (the former per config) in lfbm_dist.inference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import ConfigError, PerfConfig
from ..inference import LogPosteriorFn, log_posterior


def _on(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


@dataclass
class FastPath:
    device: torch.device
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile_mode: str | None = None  # None = eager
    fallback_reason: str | None = None  # set when compilation failed and we went eager
    note: str | None = None  # why an `auto` switch stayed off
    _compiled: LogPosteriorFn | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, perf: PerfConfig, device: torch.device, deepspeed: bool = False) -> FastPath:
        """deepspeed: the model will be handed to a DeepSpeed engine, which views every parameter
        as contiguous bytes (broadcast at start-up, flat ZeRO buffers): NHWC weights crash it."""
        compile_on = _on(perf.compile, device)
        # CUDA graphs need CUDA; on CPU "reduce-overhead" would silently be plain compilation.
        mode = perf.compile_mode if (device.type == "cuda" or perf.compile_mode != "reduce-overhead") else "default"
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
            note=note,
        )

    def describe(self) -> str:
        parts = [
            f"channels_last={'on' if self.channels_last else 'off'}",
            f"cudnn_benchmark={'on' if self.cudnn_benchmark else 'off'}",
            f"compile={self.compile_mode or 'off'}",
        ]
        if self.note:
            parts.append(f"({self.note})")
        if self.fallback_reason:
            parts.append(f"(compile fell back to eager: {self.fallback_reason})")
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

    @property
    def log_posterior(self) -> LogPosteriorFn | None:
        """The function langevin_posterior should call (None = its eager default)."""
        if self.compile_mode is None:
            return None
        if self._compiled is None:
            compiled = torch.compile(log_posterior, mode=self.compile_mode, dynamic=False)
            self._compiled = self._with_fallback(compiled)
        return self._compiled

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
                self.fallback_reason = (
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
                    if str(exc).strip()
                    else type(exc).__name__
                )
                logging.getLogger("lfbm_dist").warning(
                    "torch.compile failed (%s); Langevin runs eagerly", self.fallback_reason
                )
                state["fn"] = log_posterior
                self.compile_mode = None
                out = log_posterior(*args, **kwargs)
            state["checked"] = True
            return out

        return call
