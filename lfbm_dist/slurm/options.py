"""Launcher options: checked one by one (one-line errors), turned into submitit SlurmExecutor
parameters (Slurm's own names), and shown by --dry-run as the #SBATCH lines they become."""

from __future__ import annotations

import re

from ..errors import LfbmError
from ..grids import expand, point_label

_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?$|^(\d+)$")
_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_SAFE_VALUE = re.compile(r"^[\w@%+=:,./-]+$")
KILL_ON_BAD_EXIT = ["--kill-on-bad-exit=1"]  # one rank failing stops the others at once (no collective hang)
# --elastic: one torch elastic agent per node; a failed node must not end the others (the agents re-form)
ELASTIC_SRUN = ["--kill-on-bad-exit=0"]


def parse_elastic(text: str | None) -> tuple[int, int] | None:
    """--elastic MIN:MAX -> (MIN, MAX) nodes: the job continues while at least MIN are alive."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+):(\d+)", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise LaunchOptionError(f"--elastic: expected MIN:MAX nodes with 1 <= MIN <= MAX, got {text!r}")
    return int(m.group(1)), int(m.group(2))


class LaunchOptionError(LfbmError, ValueError):
    pass


def parse_time_min(text: str) -> int:
    """Slurm time: MIN, HH:MM, HH:MM:SS or D-HH:MM:SS -> minutes."""
    m = _TIME.match(text)
    if not m:
        raise LaunchOptionError(f"--time: not a Slurm time (MIN, HH:MM:SS or D-HH:MM:SS): {text!r}")
    if m.group(5):
        return int(m.group(5))
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.group(1, 2, 3, 4))
    return max(1, days * 1440 + hours * 60 + minutes + (1 if seconds else 0))


def parse_mem_gb(text: str) -> float:
    m = _MEM.match(text)
    if not m:
        raise LaunchOptionError(f"--mem: use e.g. 480G or 64000M, got {text!r}")
    scale = {"": 1 / 1024, "K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024}[m.group(2).upper()]
    return float(m.group(1)) * scale


def parse_sbatch(pairs: list[str]) -> dict[str, str]:
    """--sbatch key=value -> extra #SBATCH lines; values are checked, never passed through a shell."""
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not sep or not re.fullmatch(r"[a-z_]+", key) or not _SAFE_VALUE.match(value):
            raise LaunchOptionError(f"--sbatch: expected key=value with a plain value, got {pair!r}")
        extra[key] = value
    return extra


def parse_grid(items: list[str]) -> list[list[str]]:
    """['a.b=1,2', 'c=x,y'] -> the cartesian product as override lists."""
    axes = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise LaunchOptionError(f"--grid: expected key=v1,v2,..., got {item!r}")
        axes[key] = [v for v in values.split(",") if v != ""]
    return [[f"{k}={v}" for k, v in point.items()] for point in expand(axes)]


def point_name(overrides: list[str]) -> str:
    """'langevin.num_steps=20' + 'langevin.step_size=0.05' -> 'num_steps-20_step_size-0.05'."""
    return point_label([o.partition("=")[::2] for o in overrides]) or "default"


def slurm_parameters(args, name: str, array_parallelism: int | None = None, dependency: str | None = None) -> dict:
    """Validated submitit SlurmExecutor parameters (Slurm's own names)."""
    if args.nodes < 1 or args.gpus_per_node < 0 or args.cpus_per_task < 1 or args.tasks_per_node < 1:
        raise LaunchOptionError("--nodes, --tasks-per-node and --cpus-per-task must be >= 1, --gpus-per-node >= 0")
    if args.max_requeues < 0 or args.signal_delay < 0:
        raise LaunchOptionError("--max-requeues and --signal-delay must be >= 0")
    elastic = parse_elastic(getattr(args, "elastic", None))
    if elastic and args.nodes not in (1, elastic[1]):
        raise LaunchOptionError(f"--elastic {args.elastic} allocates {elastic[1]} nodes; drop --nodes {args.nodes}")
    params = {
        "job_name": name,
        "time": parse_time_min(args.time),
        "nodes": elastic[1] if elastic else args.nodes,
        "ntasks_per_node": args.gpus_per_node or args.tasks_per_node,
        "cpus_per_task": args.cpus_per_task,
        "signal_delay_s": args.signal_delay,
        "srun_args": list(KILL_ON_BAD_EXIT),
    }
    if elastic:  # one agent task per node, holding all of the node's CPUs; its workers are its children
        params["ntasks_per_node"], params["cpus_per_task"] = 1, args.cpus_per_task * params["ntasks_per_node"]
        params["srun_args"] = list(ELASTIC_SRUN)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.mem:
        params["mem"] = f"{int(parse_mem_gb(args.mem) * 1024)}M"
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(args, key)
        if value:
            if not _SAFE_VALUE.match(value):
                raise LaunchOptionError(f"--{key}: unexpected characters in {value!r}")
            params[key] = value
    extra = parse_sbatch(args.sbatch)
    if elastic:
        extra["no_kill"] = True  # a failed node does not end the allocation: the survivors go on
    if extra:
        params["additional_parameters"] = extra
    if array_parallelism:
        params["array_parallelism"] = array_parallelism
    if dependency:
        params["dependency"] = dependency
    return params


def sbatch_lines(params: dict, array_size: int | None = None) -> list[str]:
    """The #SBATCH lines these parameters become in the script submitit writes."""
    lines = []
    for key, value in params.items():
        if key in ("srun_args", "additional_parameters", "array_parallelism"):
            continue
        if key == "signal_delay_s":
            lines.append(f"#SBATCH --signal=USR2@{value}")
        else:
            lines.append(f"#SBATCH --{key.replace('_', '-')}={value}")
    for key, value in params.get("additional_parameters", {}).items():
        flag = f"--{key.replace('_', '-')}"
        lines.append(f"#SBATCH {flag}" if value is True else f"#SBATCH {flag}={value}")
    if array_size:
        parallel = params.get("array_parallelism")
        lines.append(f"#SBATCH --array=0-{array_size - 1}" + (f"%{parallel}" if parallel else ""))
    lines.append("#SBATCH --requeue")
    lines.append(f"srun {' '.join(params.get('srun_args', []))} python -m submitit.core._submit <job folder>")
    return lines
