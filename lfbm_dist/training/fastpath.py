"""The GPU fast path of the iteration, resolved once from `cfg.perf` and the device: settings only
(how the chains run is lfbm_dist.inference's `ChainRunner`, built from these).

Langevin inference is ≈ 97 % of an iteration at 256² (K = 60 generator forward + input-gradient
passes per image), so this is where speed is won. What is here, and why each is a switch:

* channels-last (NHWC) generator weights and images: cuDNN's tensor-core convolution kernels
  want NHWC; in NCHW every bf16 convolution pays two layout transposes.
* cuDNN autotuning: shapes never change within a run (fixed chain batch and resolution), so
  the one-off search at the first step is paid back on every later one.
* torch.compile of ONE Langevin step (lfbm_dist.inference's `posterior_step`: the input gradient by
  torch.func.grad, whose backward Inductor fuses with the forward, and the update), reused by every
  step of every chain of a shape — compile time does not grow with K — and, on CUDA, each chain
  captured as one CUDA graph around the K calls: one replay per chain, no Python, no host round trip
  and no kernel launch per step. The H100 reading (docs/PERFORMANCE.md) showed the step
  launch-bound: compiling only the log-posterior left one replay and an eager update per step (5.2×
  plain eager); that per-step form is kept in benchmarks/bench_train_step.py for the comparison.
* the chain batch: Langevin is per-sample and collective-free, so the chains of all micro-batches
  of a step run as one large batch (the trainer concatenates them) while learning keeps its
  micro-batch; every call gets exactly `chain_batch` chains (padded), so a graph never recompiles.

`auto` = on for CUDA, off on CPU (where docs/PERFORMANCE.md measured no gain). If compilation
fails (no C++ compiler, an unsupported torch version), the run says so once and continues eagerly
with the same math (inference/chain.py); the run's end line counts the graphs compiled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .. import private_apis
from ..config import ConfigError, PerfConfig
from ..inference import ChainRunner


def _on(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


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


# Bytes per element of the generator's module outputs that Inductor's buffer plan for one compiled
# Langevin step (its memory planner's peak, forward + input gradient) needs per chain, by autocast dtype.
# Calibrated with benchmarks/cuda_codegen.py (the plan of the CUDA graph) on the presets; the spread
# and the error of this estimate are in docs/PERFORMANCE.md ("Memory of a chain").
PLAN_BYTES_PER_OUTPUT = {None: 5.12, torch.bfloat16: 3.07}  # the largest measured: never below the plan


def module_output_elements(generator: nn.Module, nz: int) -> int:
    """Elements of every leaf module's output in one forward pass of one latent (on the meta device:
    no memory, no compute)."""
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
    return total[0]


def chain_bytes_per_sample(generator: nn.Module, nz: int, autocast_dtype: torch.dtype | None = None) -> int:
    """Memory one chain of the compiled Langevin step needs: the generator's module outputs × the bytes
    per output that Inductor's buffer plan was measured to need (PLAN_BYTES_PER_OUTPUT)."""
    per_output = PLAN_BYTES_PER_OUTPUT.get(autocast_dtype, PLAN_BYTES_PER_OUTPUT[None])
    return int(module_output_elements(generator, nz) * per_output)


@dataclass(frozen=True)
class FastPath:
    device: torch.device
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile_mode: str | None = None  # None = eager
    capture: bool = False  # each chain as one explicit CUDA graph around the compiled step (CUDA)
    chain_batch_setting: int = 0  # perf.chain_batch (0 = auto)
    deterministic: bool = False  # perf.deterministic: reproducible kernels, no autotuning
    note: str | None = None  # why an `auto` switch stayed off

    @classmethod
    def resolve(cls, perf: PerfConfig, device: torch.device, deepspeed: bool = False) -> FastPath:
        """deepspeed: the model will be handed to a DeepSpeed engine, which views every parameter
        as contiguous bytes (broadcast at start-up, flat ZeRO buffers): NHWC weights crash it."""
        compile_on = _on(perf.compile, device)
        if compile_on and private_apis.inductor_freezing():
            raise ConfigError(
                "Inductor freezing is on (TORCHINDUCTOR_FREEZING=1): it would bake the weights into the "
                "compiled Langevin chain as constants, so training would keep inferring with its first "
                "weights; unset TORCHINDUCTOR_FREEZING or set perf.compile=off"
            )
        mode = "default" if perf.compile_mode == "auto" else perf.compile_mode
        cuda = device.type == "cuda"
        # CUDA graphs need CUDA; on CPU "reduce-overhead" would silently be plain compilation.
        if not cuda and mode == "reduce-overhead":
            mode = "default"
        records_itself = cuda and private_apis.mode_records_cuda_graphs(mode)
        if perf.cuda_graphs == "on" and records_itself:
            raise ConfigError(
                f"perf.compile_mode={mode} records a CUDA graph per step itself, so it cannot also capture "
                "each chain (perf.cuda_graphs=on); use perf.compile_mode=default (or "
                "max-autotune-no-cudagraphs) with perf.cuda_graphs=on, or perf.cuda_graphs=auto"
            )
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
            # Autotuning picks kernels anew in every process: not reproducible across a resume.
            cudnn_benchmark=_on(perf.cudnn_benchmark, device) and device.type == "cuda" and not perf.deterministic,
            compile_mode=mode if compile_on else None,
            capture=compile_on and cuda and not records_itself and _on(perf.cuda_graphs, device),
            chain_batch_setting=perf.chain_batch,
            deterministic=perf.deterministic,
            note=note,
        )

    def describe(self) -> str:
        compiled = self.compile_mode is not None
        parts = [
            f"channels_last={'on' if self.channels_last else 'off'}",
            f"cudnn_benchmark={'on' if self.cudnn_benchmark else 'off'}",
            f"compile={self.compile_mode or 'off'}" + (" (one Langevin step)" if compiled else ""),
        ]
        if self.capture:
            parts.append("cuda_graphs=one per chain")
        elif compiled and self.device.type == "cuda" and private_apis.mode_records_cuda_graphs(self.compile_mode):
            parts.append("cuda_graphs=one per step (the mode's own)")
        if self.deterministic:
            parts.append("deterministic=on")
        if self.note:
            parts.append(f"({self.note})")
        return " ".join(parts)

    def apply(self, model: nn.Module) -> nn.Module:
        """Process-wide and module settings; call before the model is wrapped (DDP/DeepSpeed)."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.deterministic:
            # cuBLAS needs a fixed workspace for reproducible reductions; read at its first handle.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)  # an op without one warns, never stops
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # only 4-D tensors (conv weights) change
        return model

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the generator's memory format, so the residual x − g(z) needs no transpose."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def chain_batch(
        self, micro_batch: int, step_batch: int, generator: nn.Module, nz: int, autocast: torch.dtype | None = None
    ) -> int:
        """Chains per call for a step of step_batch chains learned in micro_batch pieces.
        Explicit setting > auto: CUDA = the whole step, capped by free memory; CPU = one micro-batch
        (nothing is launch-bound there, and the CPU numerics stay those of the micro-batch)."""
        if self.chain_batch_setting:
            return self.chain_batch_setting
        if self.device.type != "cuda":
            return micro_batch
        free_bytes, _ = torch.cuda.mem_get_info(self.device)  # host query, once per resolve
        per_chain = chain_bytes_per_sample(generator, nz, autocast)
        return chain_batch_from_memory(step_batch, micro_batch, per_chain, free_bytes)

    def runner(self, batch: int | None, autocast_dtype: torch.dtype | None = None) -> ChainRunner:
        """How chains run with these settings, `batch` chains per call (every call padded to it, so a
        last, smaller batch meets the same graph)."""
        return ChainRunner(
            compile_mode=self.compile_mode,
            batch=batch,
            channels_last=self.channels_last,
            autocast_dtype=autocast_dtype,
            capture=self.capture,
        )

    @staticmethod
    def test_time_autocast(cfg) -> torch.dtype | None:
        """The precision of test-time chains: the training's (train.precision). Measured at CPU scale
        (docs/PERFORMANCE.md): reconstruction MSE moves by less than 1 % between float32 and bf16
        test-time chains, and a bf16 chain meets the training's compiled step where the shapes agree."""
        return torch.bfloat16 if cfg.train.precision == "bf16" else None

    def test_time_runner(self, batch: int, autocast_dtype: torch.dtype | None = None) -> ChainRunner:
        """Test-time chains (reconstruction, inpainting, anomaly, aggregated posterior): their batch
        unless perf.chain_batch is set."""
        return self.runner(self.chain_batch_setting or batch, autocast_dtype)
