"""DeepSpeed specifics behind the engine: its config from the launcher's JSON, safe loading of its
checkpoints, consolidation of ZeRO shards, and the full (unpartitioned) optimizer state of ZeRO-1/2
through DeepSpeed's tensor-fragment API, so that a ZeRO checkpoint can continue on another number of
ranks or under DDP, and the reverse."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ... import state_schema as schema
from ...config import Config, ConfigError

_SAFE_GLOBALS = (  # plain data holders DeepSpeed pickles into ZeRO checkpoints
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def allow_deepspeed_classes() -> None:
    """Let the weights-only unpickler read DeepSpeed's checkpoints (and nothing more)."""
    found = []
    for dotted in _SAFE_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass  # DeepSpeed absent or reorganised: the weights-only unpickler then refuses those files
    torch.serialization.add_safe_globals(found)


def configure(ds: dict, cfg: Config) -> int:
    """Fill the launcher-built DeepSpeed config with what only we know (as Accelerate's docs do when
    there is no dataloader) and refuse settings that would silently change the training. Returns
    the ZeRO stage."""
    ours = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_per_gpu,
        "gradient_accumulation_steps": cfg.train.accumulation_steps,
        "gradient_clipping": cfg.optim.grad_clip,
    }
    for key, value in ours.items():
        if ds.get(key, "auto") not in ("auto", value):
            raise ConfigError(
                f"DeepSpeed config sets {key}={ds[key]} but lfbm_dist's config gives {value}; "
                'set it to "auto" in the JSON'
            )
        ds[key] = value
    for half in ("bf16", "fp16"):  # they would cast the whole module, the prior's log-determinants included
        if ds.get(half, {}).get("enabled") is True:
            raise ConfigError(
                f"DeepSpeed {half} casts the flow prior too; remove it from the JSON and use "
                "train.precision=bf16 (autocast of the generator passes)"
            )
        ds[half] = {"enabled": False}
    ds.pop("train_batch_size", None)  # derived: micro × accumulation × world
    ds.setdefault("zero_allow_untested_optimizer", True)  # our torch Adam with two parameter groups
    ds.setdefault("steps_per_print", 2**31 - 1)
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def consolidate_zero_checkpoint(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Full float32 weights from DeepSpeed ZeRO shards (no process group needed)."""
    allow_deepspeed_classes()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag="pytorch_model")
    return {k: v.float().contiguous() for k, v in state.items()}


def _zero_optimizer(optimizer):
    """DeepSpeed's ZeRO optimizer behind Accelerate's wrapper, and the torch Adam behind it."""
    zero = optimizer.optimizer
    return zero, zero.optimizer


def _relink(zero) -> None:
    """Point every parameter's fragment at the current Adam state. DeepSpeed links them once, right
    after the first parameter group's first step — before the other groups have any state — so with
    two or more groups (generator, prior) the later groups' fragments stay empty; relinking is what
    its own lazy init does, run again now that every group has its state."""
    if not hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        raise ConfigError(
            "this DeepSpeed version has no optimizer-state linking lfbm_dist knows; resume ZeRO checkpoints "
            "on the world size they were written with"
        )
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()


def full_state(plain: nn.Module, optimizer, groups: list[list[str]], wanted=lambda key: True) -> dict:
    """Collective: every parameter's fp32 value and Adam moments, assembled from the ZeRO partitions
    (every rank gathers every tensor: the gathers are collectives); only `wanted` keys are copied out."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    zero, adam = _zero_optimizer(optimizer)
    if any(adam.state.values()):
        _relink(zero)
    steps = [_group_step(adam, i) for i in range(len(groups))]
    out = {}
    for name, p in plain.named_parameters():
        value = safe_get_full_fp32_param(p)  # collective
        if wanted(schema.key(schema.PARAM, name)):
            out[schema.key(schema.PARAM, name)] = value.detach().float().cpu()
        for moment in schema.ADAM_MOMENTS:
            value = safe_get_full_optimizer_state(p, moment)  # collective
            if wanted(schema.key(moment, name)):
                full = torch.zeros_like(p, dtype=torch.float32) if value is None else value
                out[schema.key(moment, name)] = full.float().cpu()
        if wanted(schema.key(schema.STEP, name)):
            out[schema.key(schema.STEP, name)] = torch.tensor(float(steps[_group_of(name, groups)]))
    return out


def load_full_state(plain: nn.Module, optimizer, groups: list[list[str]], state: dict[str, torch.Tensor]) -> None:
    """Each rank writes its own fragments of the given full values (no communication)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    zero, adam = _zero_optimizer(optimizer)
    params = dict(plain.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            value = state[schema.key(schema.PARAM, name)].to(p.device, p.dtype)
            p.copy_(value)  # the module's (low-precision side) copy ...
            safe_set_full_fp32_param(p, value.float())  # ... and ZeRO's fp32 master partition
    for i, group in enumerate(adam.param_groups):  # Adam's state lives on the flat partitions
        step = next(state[schema.key(schema.STEP, n)] for n in groups[i])
        for flat in group["params"]:
            adam.state[flat] = {
                "step": step.clone().float(),
                **{m: torch.zeros_like(flat) for m in schema.ADAM_MOMENTS},
            }
    _relink(zero)  # link each parameter's fragment of the new state
    for name, p in params.items():
        for moment in schema.ADAM_MOMENTS:
            safe_set_full_optimizer_state(p, state[schema.key(moment, name)].to(p.device, torch.float32), moment)


def _group_step(adam: torch.optim.Optimizer, index: int) -> float:
    params = adam.param_groups[index]["params"]
    steps = [float(adam.state[p]["step"]) for p in params if p in adam.state and "step" in adam.state[p]]
    return max(steps) if steps else 0.0


def _group_of(name: str, groups: list[list[str]]) -> int:
    return next(i for i, names in enumerate(groups) if name in names)
