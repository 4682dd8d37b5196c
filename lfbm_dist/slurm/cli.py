"""Submit lfbm_dist training, sweeps and evaluation to Slurm with submitit.

    lfbm-slurm train --config configs/celebahq256.yaml --nodes 4 --gpus-per-node 8 --partition gpu \
        --time 24:00:00 [--account A --qos Q --constraint C --mem 480G --cpus-per-task 10] \
        [--sbatch key=value ...] [--then-eval fid,recon] [--max-requeues 20] [--dry-run] [key=value ...]
    lfbm-slurm sweep --config configs/svhn32.yaml --grid langevin.num_steps=20,40,60 \
        langevin.step_size=0.05,0.1 --max-parallel 4 --partition gpu --time 12:00:00 [--then-eval fid]
    lfbm-slurm summary --root slurm_runs/svhn32-sweep

`lfbm-slurm train --elastic MIN:MAX …` runs one torch elastic agent per node instead (c10d rendezvous
on the first node, Slurm --no-kill): a failed rank is restarted and a lost node leaves the others to
go on, each time from the newest complete checkpoint, with no human and no requeue.
Resubmitting a run (same --out/--name) resumes it from its newest checkpoint — on another number of
nodes too: the global batch, the data order and the optimizer state carry over (README: "Elastic resume").
--dry-run prints every job it would submit: its #SBATCH lines, the requeue policy and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import cli, logs
from .. import state_schema as schema
from ..grids import write_summary
from .jobs import ElasticTrainJob, EvalJob, TrainJob
from .options import LaunchOptionError, parse_elastic, parse_grid, point_name, sbatch_lines, slurm_parameters


def make_executor(folder: Path, params: dict):
    import shutil

    import submitit

    if shutil.which("srun") is None:
        raise LaunchOptionError("Slurm not found on this machine (no srun); --dry-run shows what would be submitted")
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=10**6)  # requeues are bounded by us
    executor.update_parameters(**params)
    return executor


def _show(title: str, params: dict, commands: list[list[str]], array: bool = False) -> None:
    print(f"# {title}")
    print("\n".join(sbatch_lines(params, len(commands) if array else None)))
    for i, cmd in enumerate(commands):
        print(f"#   {'task ' + str(i) + ': ' if array else 'runs: '}{' '.join(cmd)}")
    print()


def _requeue_policy(args) -> str:
    return (
        f"requeued on USR2 {args.signal_delay} s before the time limit or on preemption, at most "
        f"{args.max_requeues} times; every rank resumes with train.resume=auto"
    )


def submit_jobs(jobs: list[TrainJob], args, folder: Path, name: str, then_eval: str | None) -> list:
    """One training job, or an array of them, plus an optional evaluation (array) that starts after each
    training task succeeds. With --dry-run, prints them instead. Returns the submitted jobs."""
    array = len(jobs) > 1
    params = slurm_parameters(args, name, array_parallelism=getattr(args, "max_parallel", 0) or None)
    evals = [EvalJob(j.run_dir, then_eval, []) for j in jobs] if then_eval else []
    if args.dry_run:
        nodes = f"{args.nodes} node(s) × {params['ntasks_per_node']} task(s)"
        elastic = isinstance(jobs[0], ElasticTrainJob)
        if elastic:
            nodes = f"{jobs[0].nodes[0]} to {jobs[0].nodes[1]} node(s), one torch elastic agent each, --no-kill"
        _show(
            f"job 1: training{' array of ' + str(len(jobs)) if array else ''} ({nodes}); {_requeue_policy(args)}",
            params,
            [j.agent_command() if elastic else j.command() for j in jobs],
            array,
        )
        if evals:
            dep = "aftercorr:<job 1> (each evaluation after its own training task)" if array else "afterok:<job 1>"
            _show(
                f"job 2: evaluation ({then_eval}), starts after training succeeds: --dependency={dep}",
                {**params, "job_name": f"{name}-eval", "dependency": dep.split()[0]},
                [e.command() for e in evals],
                array,
            )
        return []
    executor = make_executor(folder, params)
    if array:
        with executor.batch():
            submitted = [executor.submit(job) for job in jobs]
        first = submitted[0].job_id.split("_")[0]
    else:
        submitted = [executor.submit(jobs[0])]
        first = submitted[0].job_id
    print(
        f"submitted training {'array of ' + str(len(jobs)) + ' ' if array else 'job '}{first} -> "
        f"{jobs[0].run_dir if not array else folder.parent}"
    )
    if evals:
        dep = f"aftercorr:{first}" if array else f"afterok:{first}"
        eval_exec = make_executor(folder, slurm_parameters(args, f"{name}-eval", dependency=dep))
        if array:
            with eval_exec.batch():
                ev = [eval_exec.submit(e) for e in evals]
        else:
            ev = [eval_exec.submit(evals[0])]
        print(f"submitted evaluation job {ev[0].job_id.split('_')[0]} (after {first}): {then_eval}")
    return submitted


def cmd_train(args) -> int:
    from ..config import load_config

    run_dir = Path(args.out).resolve() / (args.name or Path(args.config).stem)
    load_config(args.config, args.overrides)  # fail here, not in the queue
    job = TrainJob(str(Path(args.config).resolve()), args.overrides, str(run_dir), args.max_requeues)
    elastic = parse_elastic(args.elastic)
    if elastic:
        procs = args.gpus_per_node or args.tasks_per_node
        job = ElasticTrainJob(
            job.config, job.overrides, job.run_dir, job.max_requeues, elastic, procs, args.max_restarts
        )
    submitted = submit_jobs([job], args, run_dir / "slurm", run_dir.name, args.then_eval)
    if submitted and args.wait:
        print(json.dumps(submitted[0].results()[0]))  # one result per task; rank 0 speaks for the job
    return 0


def _sets(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0] == key for o in overrides)


def cmd_sweep(args) -> int:
    from ..config import load_config

    root = Path(args.out).resolve() / (args.name or f"{Path(args.config).stem}-sweep")
    jobs = []
    # Every task compiles the same chain graphs (a grid point rarely changes them): one cache for all.
    shared = [] if _sets(args.overrides, "perf.compile_cache") else [f"perf.compile_cache={root / 'compile_cache'}"]
    for overrides in parse_grid(args.grid):
        load_config(args.config, [*args.overrides, *overrides])  # every point valid before submitting
        jobs.append(
            TrainJob(
                str(Path(args.config).resolve()),
                [*args.overrides, *shared, *overrides],
                str(root / point_name(overrides)),
                args.max_requeues,
            )
        )
    submitted = submit_jobs(jobs, args, root / "slurm", root.name, args.then_eval)
    if not submitted:
        return 0
    (root / "sweep.json").write_text(
        json.dumps(
            {
                "config": args.config,
                "grid": args.grid,
                "points": [
                    {"run_dir": j.run_dir, "overrides": j.overrides, "job_id": s.job_id}
                    for j, s in zip(jobs, submitted)
                ],
            },
            indent=2,
        )
    )
    if args.wait:
        for s in submitted:
            s.results()
        return cmd_summary(argparse.Namespace(root=str(root), json=False))
    return 0


def collect(root: Path) -> list[dict]:
    rows = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file()):
        row = {"point": run_dir.name}
        for name in (schema.TRAINER_STATE, "metrics.json"):
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
        raise LaunchOptionError(f"{root}: no such sweep directory")
    rows = collect(root)
    from ..metrics.fid import check_comparable

    with_fid = [r for r in rows if "fid" in r]
    for r in with_fid[1:]:  # a table of FIDs is a comparison: refuse incomparable ones
        try:
            check_comparable(with_fid[0], r)
        except ValueError as exc:
            raise LaunchOptionError(f"{with_fid[0]['point']} vs {r['point']}: {exc}") from None
    keys = ["point"] + sorted({k for r in rows for k in r} - {"point"})
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |"
        )
    write_summary(root, "\n".join(lines) + "\n", rows)
    print(json.dumps(rows, indent=2) if args.json else "\n".join(lines))
    return 0


def add_slurm_options(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("--config", required=True, help="YAML preset")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node = tasks per node")
    p.add_argument("--tasks-per-node", type=int, default=1, help="tasks per node without GPUs (CPU clusters)")
    p.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task (data workers + main)")
    p.add_argument("--mem", help="memory per node, e.g. 480G")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--qos", help="Slurm quality of service")
    p.add_argument("--constraint", help="Slurm node constraint")
    p.add_argument("--time", default="24:00:00", help="time limit: MIN, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--signal-delay", type=int, default=120, help="seconds before the limit to signal (USR2)")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra #SBATCH option")
    p.add_argument("--max-requeues", type=int, default=10, help="requeues on time limit / preemption (default 10)")
    p.add_argument("--out", default="slurm_runs", help="parent folder of the run directories")
    p.add_argument("--name", help="run (or sweep) directory name")
    p.add_argument("--dry-run", action="store_true", help="print every job that would be submitted, and exit")
    p.add_argument("--wait", action="store_true", help="block until the job(s) finish")


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("lfbm-slurm", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="one training job", description="one training job")
    add_slurm_options(p)
    p.add_argument("--then-eval", metavar="METRICS", help="chain an evaluation job, e.g. fid,recon")
    p.add_argument(
        "--elastic",
        metavar="MIN:MAX",
        help="torch elastic: MAX nodes, one agent each; a failed rank is restarted, a lost node leaves the "
        "others to continue while MIN remain (Slurm --no-kill); workers resume from the newest checkpoint",
    )
    p.add_argument("--max-restarts", type=int, default=3, help="with --elastic: agent restarts of the workers")
    cli.add_overrides(p)
    p = sub.add_parser("sweep", help="a job array over a grid of overrides", description="a job array")
    add_slurm_options(p)
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2", help="axes of the grid")
    p.add_argument("--max-parallel", type=int, default=0, help="array tasks running at once (0 = no limit)")
    p.add_argument("--then-eval", metavar="METRICS", help="evaluate each point after it trains, e.g. fid")
    p.add_argument("--overrides", nargs="*", default=[], help="overrides shared by every point")
    p = sub.add_parser("summary", help="collect each point's results into one table", description="summary")
    p.add_argument("--root", required=True, help="a sweep directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    logs.setup()
    commands = {"train": cmd_train, "sweep": cmd_sweep, "summary": cmd_summary}

    def body() -> int:
        try:
            return commands[args.command](args)
        except LaunchOptionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
