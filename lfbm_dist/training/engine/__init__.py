"""THE distributed boundary: the only module that talks to Accelerate, DeepSpeed or torch.distributed.

Everything else sees two names for the model — `plain` (the nn.Module: Langevin inference,
sampling, export) and `wrapped` (DDP / DeepSpeed engine: the learning step only) — and the
collectives below, each of which returns the single-process answer when there is no process group,
so every module runs on a laptop. Launch commands: see lfbm_dist/train.py.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Collection
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from ... import state_schema as schema
from ...config import Config
from ...errors import LfbmError
from ...logs import cpu_deepspeed_without_cuda
from ..fastpath import FastPath
from . import zero
from .launch import LaunchError, check_world_size, job_store, join_process_group, launcher_command, lost_rendezvous
from .trackers import PROJECT, Trackers, TrackerSpec
from .trackers import build as tracker_objects

__all__ = [
    "Engine",
    "LaunchError",
    "PeerFailure",
    "TrackerSpec",
    "Trackers",
    "job_store",
    "launcher_command",
    "start_job",
]

# Nothing executes code from a checkpoint: every torch.load in this process — DeepSpeed's own
# (it passes weights_only=False) and zero_to_fp32's included — uses the weights-only unpickler.
# This is torch's documented switch for it; the DeepSpeed data classes its checkpoints hold are
# allowlisted in zero.allow_deepspeed_classes.
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"


def saved_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a state dict holds (BatchNorm statistics; not the non-persistent index tables)."""
    params = {n for n, _ in model.named_parameters()}
    return {n: t for n, t in model.state_dict(keep_vars=True).items() if n not in params}


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"  # gloo on CPU: NCCL needs GPUs


def _timeout(cfg: Config) -> datetime.timedelta:
    return datetime.timedelta(minutes=cfg.train.collective_timeout_min)  # long evaluations between collectives


# What gloo and NCCL say when a peer is gone (a closed connection, a reset, an aborted communicator)
_TRANSPORT = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport",
              "NCCL communicator was aborted", "ncclRemoteError", "Connection refused")  # fmt: skip


def _transport_failure(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError) or any(m in str(exc) for m in _TRANSPORT)


def start_job(cfg: Config) -> bool:
    """Join the job's process group now if this process was launched as one of several (idempotent: the
    Engine uses the same group); True if so. Under torch elastic, a fresh store prefix per attempt
    (launch.py says why)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if _backend() == "nccl":  # the NCCL flight recorder: what each rank's collectives did, for the hang dump
        os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
        os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
        trace = os.path.join(os.path.abspath(cfg.train.run_dir), "hang", "nccl_trace_rank_")
        os.environ.setdefault("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", trace)
    join_process_group(_backend(), _timeout(cfg))
    return True


class PeerFailure(LfbmError, RuntimeError):
    """A collective failed because another rank is gone; that rank reports the cause."""


class Engine:
    """Process group, model wrapping, the guarded optimizer step, collectives, checkpoint I/O."""

    def __init__(self, cfg: Config, trackers: TrackerSpec | None = None):
        """trackers: where rank 0 logs (train.log_with; trackers.py), started by open_trackers."""
        cpu_deepspeed_without_cuda()  # before Accelerate imports DeepSpeed
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cuda = torch.cuda.is_available()
        init = InitProcessGroupKwargs(backend=_backend(), timeout=_timeout(cfg))
        launched = start_job(cfg)  # Accelerate treats an explicit backend as distributed
        self.uses_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        # cpu=True would silently turn DeepSpeed off; DeepSpeed finds its CPU accelerator itself.
        # mixed_precision="no": bf16 autocast is ours (train.precision, generator passes only).
        self.accelerator = Accelerator(
            cpu=not cuda and not self.uses_deepspeed,
            mixed_precision="no",
            kwargs_handlers=[init] if launched else [],
            gradient_accumulation_steps=cfg.train.accumulation_steps,
            log_with=tracker_objects(trackers) if trackers else None,
        )
        self.device = self.accelerator.device
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        check_world_size(self.world_size)
        self.grad_clip = cfg.optim.grad_clip
        self.autocast_dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
        # channels-last, cuDNN autotuning, compile (channels-last never under DeepSpeed: it crashes there)
        self.fast = FastPath.resolve(cfg.perf, self.device, deepspeed=self.uses_deepspeed)
        self.backend_name = str(self.accelerator.distributed_type).split(".")[-1]
        self.zero_stage = 0
        if self.uses_deepspeed:
            zero.allow_deepspeed_classes()
            self.zero_stage = zero.configure(self.accelerator.state.deepspeed_plugin.deepspeed_config, cfg)
            self.backend_name += f" ZeRO-{self.zero_stage}"
        self._wrapped: Any = None
        self._optimizer: Any = None
        self.group_names: list[list[str]] = []  # parameter names of each optimizer group
        self._tracker_spec = trackers if self.is_main else None
        self.trackers = Trackers(self.accelerator, None)  # nowhere until open_trackers

    def open_trackers(self) -> Trackers:
        """Start rank 0's trackers (once the run directory is in place) and hand them out."""
        if self._tracker_spec is not None and not self.accelerator.trackers:
            self.accelerator.init_trackers(PROJECT)  # parameters: Trackers decides what each gets
            self.trackers = Trackers(self.accelerator, self._tracker_spec)
        return self.trackers

    # ------------------------------------------------------------------ model and optimizer
    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """Fast-path layout first (DDP registers its buckets on the parameters as they are then);
        DDP's bucketed all-reduce overlaps the learning step's backward (DeepSpeed: overlap_comm)."""
        self.fast.apply(model)
        names = {id(p): n for n, p in model.named_parameters()}
        self.group_names = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        self._wrapped, self._optimizer = self.accelerator.prepare(model, optimizer)
        return self._wrapped, self._optimizer

    def unwrap(self, wrapped: Any) -> nn.Module:
        if not self.zero_stage and not hasattr(wrapped, "_orig_mod"):  # DDP or none, not compiled by Accelerate
            # Accelerate's unwrap_model would import DeepSpeed to look for its engine (≈ 0.5 s of every
            # non-DeepSpeed process's start, and the test suite starts hundreds).
            return wrapped.module if isinstance(wrapped, nn.parallel.DistributedDataParallel) else wrapped
        return self.accelerator.unwrap_model(wrapped)

    def accumulate(self, wrapped: Any):
        """One micro-step: DDP skips its all-reduce until the last one; DeepSpeed counts micro-steps.
        Loss scaling by 1/accumulation_steps happens inside `backward` (Accelerate or DeepSpeed)."""
        return self.accelerator.accumulate(wrapped)

    def backward(self, loss: torch.Tensor) -> None:
        """The learning backward: under DDP (and DeepSpeed's last micro-step) it runs the gradients'
        all-reduce, where a lost peer shows up as a transport error, said as one."""
        try:
            self.accelerator.backward(loss)
        except (RuntimeError, ConnectionError) as exc:
            if self.distributed and _transport_failure(exc):
                raise PeerFailure(self._peer_lost(exc)) from None
            raise

    def guarded_step(self, plain: nn.Module) -> tuple[bool, torch.Tensor | None]:
        """check → clip → step → zero, the same on every backend: a step whose gradients are not
        all finite is not applied (and its gradients are dropped); clipping is by the global norm
        of all networks together. Returns (applied, global gradient norm).

        DeepSpeed runs exactly this inside its engine.step() (called by Accelerate at the end of
        the last micro-step's backward): the global norm is all-reduced over the ZeRO partitions and
        a non-finite one skips the step. We read its decision instead of re-deriving it."""
        if self.uses_deepspeed:
            ds_engine = self._wrapped
            norm = ds_engine.get_global_grad_norm()
            norm = None if norm is None else torch.as_tensor(float(norm), device=self.device)
            return bool(ds_engine.was_step_applied()), norm
        grads = [p.grad for p in plain.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else None
        # DDP: gradients are already all-reduced, so every rank reaches the same decision.
        applied = norm is None or bool(torch.isfinite(norm))  # host–device sync: once per step
        if applied:
            if self.grad_clip > 0 and grads:
                torch.nn.utils.clip_grads_with_norm_(list(plain.parameters()), self.grad_clip, norm)
            self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        return applied, norm

    # ------------------------------------------------------------------ collectives
    @property
    def distributed(self) -> bool:
        return torch_dist.is_available() and torch_dist.is_initialized()

    def _collective(self, fn, *args):
        try:
            return fn(*args)
        except (RuntimeError, ConnectionError) as exc:  # gloo/NCCL: a peer exited or stopped answering
            raise PeerFailure(self._peer_lost(exc)) from None

    def _peer_lost(self, exc: Exception) -> str:
        """What is known when a collective fails: which rank if there is one other, that it left while
        this one waited, and that a rank killed outright (SIGKILL, the OOM killer, a lost node) prints nothing."""
        who = f"rank {1 - self.rank}" if self.world_size == 2 else "another rank"
        store = lost_rendezvous()
        if store is not None:
            return (
                f"the node hosting the job's rendezvous ({store}) is gone ({who} left while rank {self.rank} "
                f"waited for it in a collective): torch elastic's rendezvous lives on that one node, so the "
                "nodes left cannot go on; start the job again on them, one hosting the rendezvous "
                "(--rdzv-endpoint HOST:PORT on every node), with train.resume=auto: it continues from the "
                "newest complete checkpoint"
            )
        return (
            f"{who} left the job while rank {self.rank} waited for it ({type(exc).__name__} in a collective): "
            "if no other rank printed an error, it was killed without a word (SIGKILL, the OOM killer or a lost "
            "node: see the launcher's exit codes and the node's kernel log); continue with train.resume=auto"
        )

    def first_failure(self, own: str | None) -> tuple[int, str] | None:
        """(rank, its text) of the lowest rank whose `own` is not None, the same on every rank; None if
        no rank's is. Collective: one all-reduce of flags, and a broadcast only when some rank failed."""
        flags = torch.zeros(self.world_size, dtype=torch.float64)
        flags[self.rank] = float(own is not None)
        failing = torch.nonzero(self.all_reduce_sum(flags))
        if len(failing) == 0:
            return None
        source = int(failing[0])
        return source, self.broadcast_object(own, src=source)

    def reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of a device tensor (call on every rank, once per logging tick)."""
        if self.world_size == 1:
            return values
        return self._collective(self.accelerator.reduce, values, "mean")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks; returns a CPU tensor (NCCL reduces CUDA tensors, gloo CPU ones)."""
        if not self.distributed:
            return tensor
        on_device = tensor.to(self.device) if torch_dist.get_backend() == "nccl" else tensor.cpu().clone()
        self._collective(torch_dist.all_reduce, on_device)
        return on_device.cpu()

    def all_gather_cat(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Each rank's CPU tensor (sizes may differ) concatenated in rank order; small tensors only."""
        if not self.distributed:
            return tensor
        gathered: list = [None] * self.world_size
        self._collective(torch_dist.all_gather_object, gathered, tensor.cpu())  # our own processes' tensors
        return torch.cat(gathered, dim=dim)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank src's picklable value on every rank (our own processes' small values, never file content)."""
        if not self.distributed:
            return obj
        box = [obj]
        self._collective(torch_dist.broadcast_object_list, box, src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            self._collective(torch_dist.barrier)

    def collective_timeout(self, minutes: float) -> None:
        """Change the process group's timeout (torchtitan's practice: a short one once training runs, the
        long one around evaluations and the final snapshot). No-op without a process group."""
        if self.distributed:
            from torch.distributed import distributed_c10d

            distributed_c10d._set_pg_timeout(datetime.timedelta(minutes=minutes))

    def dump_collectives(self, path) -> None:
        """The NCCL flight recorder's record of this rank's collectives (CUDA; switched on by start_job)."""
        if self.distributed and torch_dist.get_backend() == "nccl":
            from torch._C._distributed_c10d import _dump_nccl_trace

            with open(path, "wb") as f:
                f.write(_dump_nccl_trace())

    # ------------------------------------------------------------------ state of any layout
    def layout(self) -> dict[str, Any]:
        """Who wrote a checkpoint (recorded in its manifest; loading does not depend on it)."""
        backend = "deepspeed" if self.uses_deepspeed else "ddp"
        return {"backend": backend, "zero_stage": self.zero_stage, "world_size": self.world_size}

    def state_sizes(self, plain: nn.Module) -> dict[str, int]:
        """The bytes of every key full_state gives, copying nothing (a snapshot plans its files first)."""
        out = {schema.key(schema.BUFFER, n): b.numel() * b.element_size() for n, b in saved_buffers(plain).items()}
        for name, p in plain.named_parameters():
            for kind in (schema.PARAM, *schema.ADAM_MOMENTS):
                out[schema.key(kind, name)] = p.numel() * 4  # float32, as full_state copies them
            out[schema.key(schema.STEP, name)] = 4
        return out

    def full_state(self, plain: nn.Module, keep: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """Collective: every parameter's fp32 value, Adam moments and step, and the model's buffers,
        whatever the backend, as CPU copies (training may go on changing the live tensors). keep: copy
        only these keys (a snapshot's writer copies what it writes; ZeRO still gathers everything, as
        its gathers are collectives)."""
        wanted = (lambda k: True) if keep is None else keep.__contains__
        # host–device sync: a snapshot copies its part of the state to the host (snapshot steps only)
        out = {
            k: b.detach().to("cpu", copy=True)
            for k, b in ((schema.key(schema.BUFFER, n), b) for n, b in saved_buffers(plain).items())
            if wanted(k)
        }
        if self.uses_deepspeed:
            return {**out, **zero.full_state(plain, self._optimizer, self.group_names, wanted)}
        adam = self._optimizer.optimizer  # Accelerate's wrapper around our torch Adam
        for name, p in plain.named_parameters():
            st = adam.state.get(p, {})
            for kind in (schema.PARAM, *schema.ADAM_MOMENTS):
                if wanted(schema.key(kind, name)):
                    value = p if kind == schema.PARAM else st[kind] if kind in st else torch.zeros_like(p)
                    out[schema.key(kind, name)] = value.detach().to("cpu", torch.float32, copy=True)
            if wanted(schema.key(schema.STEP, name)):
                out[schema.key(schema.STEP, name)] = torch.tensor(float(st.get("step", 0.0)))
        return out

    def load_full_state(self, plain: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load what full_state gave into this run's layout (any world size, DDP or ZeRO-1/2)."""
        with torch.no_grad():
            for name, b in saved_buffers(plain).items():
                b.copy_(state[schema.key(schema.BUFFER, name)].to(b.device, b.dtype))
        if self.uses_deepspeed:
            zero.load_full_state(plain, self._optimizer, self.group_names, state)
            return
        adam = self._optimizer.optimizer
        with torch.no_grad():
            for name, p in plain.named_parameters():
                p.copy_(state[schema.key(schema.PARAM, name)].to(p.device, p.dtype))
                adam.state[p] = {
                    "step": state[schema.key(schema.STEP, name)].clone().float(),
                    **{m: state[schema.key(m, name)].to(p.device, p.dtype).clone() for m in schema.ADAM_MOMENTS},
                }

    def end(self) -> None:
        with contextlib.suppress(PeerFailure):
            self.barrier()
        self.accelerator.end_training()
        if self.distributed:
            torch_dist.destroy_process_group()
