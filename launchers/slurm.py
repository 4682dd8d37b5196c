"""Submit lfbm_dist training / sweeps / evaluation to Slurm with submitit (outside the package:
it only calls the entry points' functions).

    python launchers/slurm.py train --config configs/celebahq256.yaml --nodes 4 --gpus-per-node 8 \
        --partition gpu --time 24:00:00 [--account A --qos Q --constraint C --mem 480G --cpus-per-task 10] \
        [--sbatch key=value ...] [--then-eval fid,recon] [--max-requeues 20] [--dry-run] [key=value ...]
    python launchers/slurm.py sweep --config configs/svhn32.yaml --grid langevin.num_steps=20,40,60 \
        langevin.step_size=0.05,0.1 --max-parallel 4 --partition gpu --time 12:00:00
    python launchers/slurm.py summary --root slurm_runs/svhn32-sweep

Layout: one task per GPU (`--gpus-per-node` tasks on each node). Every rank is a Slurm task, so
Slurm delivers the time-limit / preemption signal to each, counts and kills them as one job, and
requeue restarts all of them; the rendezvous (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) comes
from the Slurm environment via submitit. No nested `accelerate launch` is needed.

Requeue: submitit asks Slurm for USR2 `--signal-delay` seconds before the time limit; on it (or on
preemption), rank 0 requeues the job and training resumes from its newest complete checkpoint
(`train.resume=auto`); work since that checkpoint is redone, so keep `train.snapshot_every_kimg`
modest. Requeues are bounded by --max-requeues and recorded in RUN_DIR/requeues.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class LaunchOptionError(ValueError):
    pass


# ----------------------------------------------------------------------------------- the jobs


def _export_rendezvous() -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the Slurm environment (submitit)."""
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment()
    env.export(set_cuda_visible_devices=False)
    if env.world_size == 1:  # one process: no process group wanted
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            os.environ.pop(var, None)


class TrainJob:
    """Callable submitted to Slurm; `checkpoint` is submitit's requeue hook."""

    def __init__(self, config: str, overrides: list[str], run_dir: str, max_requeues: int, requeues: int = 0):
        self.config, self.overrides, self.run_dir = config, list(overrides), run_dir
        self.max_requeues, self.requeues = max_requeues, requeues

    def __call__(self) -> dict:
        os.chdir(ROOT)
        _export_rendezvous()
        from lfbm_dist.config import load_config
        from lfbm_dist.loop import training_loop

        cfg = load_config(self.config, [*self.overrides, f"train.run_dir={self.run_dir}", "train.resume=auto"])
        state = training_loop(cfg)
        return {"run_dir": self.run_dir, "step": state["step"], "images_seen": state["images_seen"],
                "requeues": self.requeues}

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on rank 0 when the time limit nears or the job is preempted."""
        import submitit

        log = Path(self.run_dir) / "requeues.json"
        history = json.loads(log.read_text()) if log.is_file() else []
        if self.requeues >= self.max_requeues:
            print(f"lfbm_dist: not requeueing: --max-requeues {self.max_requeues} reached", flush=True)
            return None
        history.append({"requeue": self.requeues + 1, "job": os.environ.get("SLURM_JOB_ID")})
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(json.dumps(history, indent=2))
        print(f"lfbm_dist: requeue {self.requeues + 1}/{self.max_requeues}; resuming from the newest checkpoint",
              flush=True)
        return submitit.helpers.DelayedSubmission(
            TrainJob(self.config, self.overrides, self.run_dir, self.max_requeues, self.requeues + 1))


class EvalJob:
    def __init__(self, run_dir: str, metrics: str, overrides: list[str]):
        self.run_dir, self.metrics, self.overrides = run_dir, metrics, list(overrides)

    def __call__(self) -> int:
        os.chdir(ROOT)
        _export_rendezvous()
        from lfbm_dist.evaluate import main as evaluate_main

        code = evaluate_main(["--run", self.run_dir, "--metrics", self.metrics, *self.overrides])
        if code:
            raise RuntimeError(f"evaluation of {self.run_dir} failed with exit code {code}")
        return code


# ----------------------------------------------------------------------------------- options

_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?$|^(\d+)$")
_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_SAFE_VALUE = re.compile(r"^[\w@%+=:,./-]+$")


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
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise LaunchOptionError(f"--grid: expected key=v1,v2,..., got {item!r}")
        axes.append([f"{key}={v}" for v in values.split(",") if v != ""])
    return [list(point) for point in itertools.product(*axes)]


def point_name(overrides: list[str]) -> str:
    """'langevin.num_steps=20' + 'langevin.step_size=0.05' -> 'num_steps-20_step_size-0.05'."""
    parts = []
    for o in overrides:
        key, _, value = o.partition("=")
        parts.append(f"{key.split('.')[-1]}-{value}")
    return re.sub(r"[^\w.=-]", "_", "_".join(parts)) or "default"


def slurm_parameters(args, name: str, array_parallelism: int | None = None) -> dict:
    """Validated submitit SlurmExecutor parameters (Slurm's own names)."""
    if args.nodes < 1 or args.gpus_per_node < 0 or args.cpus_per_task < 1 or args.tasks_per_node < 1:
        raise LaunchOptionError("--nodes, --tasks-per-node and --cpus-per-task must be >= 1, --gpus-per-node >= 0")
    if args.max_requeues < 0 or args.signal_delay < 0:
        raise LaunchOptionError("--max-requeues and --signal-delay must be >= 0")
    params = {"job_name": name, "time": parse_time_min(args.time), "nodes": args.nodes,
              "ntasks_per_node": args.gpus_per_node or args.tasks_per_node, "cpus_per_task": args.cpus_per_task,
              "signal_delay_s": args.signal_delay}
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
    if extra:
        params["additional_parameters"] = extra
    if array_parallelism:
        params["array_parallelism"] = array_parallelism
    return params


def make_executor(folder: Path, params: dict):
    import shutil

    import submitit

    if shutil.which("srun") is None:
        raise LaunchOptionError("Slurm not found on this machine (no srun); --dry-run shows what would be submitted")
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=10**6)  # we bound requeues ourselves
    executor.update_parameters(**params)
    return executor


def describe(folder: Path, params: dict) -> str:
    """The sbatch script submitit would write (for --dry-run; needs no Slurm)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=f"{sys.executable} -u -m submitit.core._submit {folder}",
                               folder=str(folder), **params)


# ----------------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from lfbm_dist.config import load_config

    run_dir = Path(args.out).resolve() / (args.name or Path(args.config).stem)
    load_config(args.config, args.overrides)  # fail here, not in the queue
    params = slurm_parameters(args, run_dir.name)
    job = TrainJob(args.config, args.overrides, str(run_dir), args.max_requeues)
    if args.dry_run:
        print(describe(run_dir / "slurm", params))
        print(f"# would train {args.config} {' '.join(args.overrides)} -> {run_dir}")
        return 0
    submitted = make_executor(run_dir / "slurm", params).submit(job)
    print(f"submitted training job {submitted.job_id} -> {run_dir}")
    if args.then_eval:
        eval_params = slurm_parameters(args, f"{run_dir.name}-eval")
        eval_params["additional_parameters"] = {**parse_sbatch(args.sbatch), "dependency": f"afterok:{submitted.job_id}"}
        ev = make_executor(run_dir / "slurm", eval_params).submit(EvalJob(str(run_dir), args.then_eval, []))
        print(f"submitted evaluation job {ev.job_id} (after {submitted.job_id}): {args.then_eval}")
    if args.wait:
        print(json.dumps(submitted.results()[0]))  # one result per task; rank 0 speaks for the job
    return 0


def cmd_sweep(args) -> int:
    from lfbm_dist.config import load_config

    points = parse_grid(args.grid)
    root = Path(args.out).resolve() / (args.name or f"{Path(args.config).stem}-sweep")
    jobs = []
    for overrides in points:
        load_config(args.config, [*args.overrides, *overrides])  # every point valid before submitting
        jobs.append(TrainJob(args.config, [*args.overrides, *overrides], str(root / point_name(overrides)),
                             args.max_requeues))
    params = slurm_parameters(args, root.name, array_parallelism=args.max_parallel)
    if args.dry_run:
        print(describe(root / "slurm", params))
        for job in jobs:
            print(f"# array task: {' '.join(job.overrides)} -> {job.run_dir}")
        return 0
    executor = make_executor(root / "slurm", params)
    with executor.batch():
        submitted = [executor.submit(job) for job in jobs]
    (root / "sweep.json").write_text(json.dumps(
        {"config": args.config, "grid": args.grid, "points": [{"run_dir": j.run_dir, "overrides": j.overrides,
                                                               "job_id": s.job_id} for j, s in zip(jobs, submitted)]},
        indent=2))
    print(f"submitted array of {len(jobs)} ({submitted[0].job_id.split('_')[0]}) -> {root}")
    if args.wait:
        for s in submitted:
            s.results()
        return cmd_summary(argparse.Namespace(root=str(root), json=False))
    return 0


def collect(root: Path) -> list[dict]:
    rows = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file()):
        row = {"point": run_dir.name}
        for name in ("trainer_state.json", "metrics.json"):
            path = run_dir / name
            if path.is_file():
                data = json.loads(path.read_text())
                row.update({k: v for k, v in data.items() if isinstance(v, (int, float, str)) and k != "best"})
        requeues = run_dir / "requeues.json"
        row["requeues"] = len(json.loads(requeues.read_text())) if requeues.is_file() else 0
        rows.append(row)
    return rows


def cmd_summary(args) -> int:
    root = Path(args.root)
    if not root.is_dir():
        print(f"error: {root}: no such sweep directory", file=sys.stderr)
        return 2
    rows = collect(root)
    from lfbm_dist.metrics.fid import check_comparable

    with_fid = [r for r in rows if "fid" in r]
    for r in with_fid[1:]:  # a table of FIDs is a comparison: refuse incomparable ones
        try:
            check_comparable(with_fid[0], r)
        except ValueError as exc:
            print(f"error: {with_fid[0]['point']} vs {r['point']}: {exc}", file=sys.stderr)
            return 2
    (root / "summary.json").write_text(json.dumps(rows, indent=2))
    keys = ["point"] + sorted({k for r in rows for k in r} - {"point"})
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                                       for k in keys) + " |")
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(rows, indent=2) if args.json else "\n".join(lines))
    return 0


def _slurm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node = tasks per node")
    p.add_argument("--tasks-per-node", type=int, default=1, help="tasks per node without GPUs (CPU clusters)")
    p.add_argument("--cpus-per-task", type=int, default=8)
    p.add_argument("--mem", help="memory per node, e.g. 480G")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--time", default="24:00:00", help="MIN, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--signal-delay", type=int, default=120, help="seconds before the limit to signal (USR2)")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra #SBATCH option")
    p.add_argument("--max-requeues", type=int, default=10)
    p.add_argument("--out", default="slurm_runs", help="parent folder of the run directories")
    p.add_argument("--name", help="run (or sweep) directory name")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted")
    p.add_argument("--wait", action="store_true", help="block until the job(s) finish")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="one training job")
    _slurm_options(p)
    p.add_argument("--then-eval", metavar="METRICS", help="chain an evaluation job, e.g. fid,recon")
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("sweep", help="a job array over a grid of overrides")
    _slurm_options(p)
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2")
    p.add_argument("--max-parallel", type=int, default=0, help="array tasks running at once (0 = no limit)")
    p.add_argument("--overrides", nargs="*", default=[], help="overrides shared by every point")
    p = sub.add_parser("summary", help="collect each point's results into one table")
    p.add_argument("--root", required=True)
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from lfbm_dist.config import ConfigError

    try:
        return {"train": cmd_train, "sweep": cmd_sweep, "summary": cmd_summary}[args.command](args)
    except (LaunchOptionError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
