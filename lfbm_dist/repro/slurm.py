"""A grid's points as Slurm job arrays through lfbm-slurm: one training array, and an evaluation
array whose task i starts when training task i succeeds and records the point like the local runner."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..slurm.cli import add_slurm_options, submit_jobs
from ..slurm.jobs import EvalJob, TrainJob
from .run import point_dir, record_point
from .spec import Grid


class PointEvalJob(EvalJob):
    def __init__(self, grid: Grid, scale: str, point, run_dir: str, metrics: str):
        super().__init__(run_dir, metrics, list(point.overrides))
        self.grid, self.scale, self.point = grid, scale, point

    def __call__(self) -> int:
        from ..evaluate import main as evaluate_main
        from ..slurm.jobs import export_rendezvous
        from .run import evaluate_args

        export_rendezvous()
        for args in evaluate_args(self.grid, self.scale, self.point, Path(self.run_dir)):
            code = evaluate_main(args)
            if code:
                raise RuntimeError(f"evaluation of {self.run_dir} failed with exit code {code}")
        if int(os.environ.get("SLURM_PROCID", "0")) == 0:
            record_point(self.grid, self.scale, self.point, Path(self.run_dir), wall_s=0.0)
        return code


def submit_grid(
    grid: Grid,
    scale: str,
    root: Path,
    partition: str | None,
    account: str | None,
    dry_run: bool,
    where: list[str] | None = None,
) -> int:
    from .run import select

    parser = argparse.ArgumentParser(prog="lfbm-repro --slurm")
    add_slurm_options(parser, config=False)
    parser.add_argument("--max-parallel", type=int, default=0)
    argv = [item for k, v in grid.scale(scale).slurm.items() for item in (f"--{k.replace('_', '-')}", str(v))]
    argv += ["--partition", partition] if partition else []
    argv += ["--account", account] if account else []
    argv += ["--dry-run"] if dry_run else []
    args = parser.parse_args(argv)
    points = select(grid, scale, where=where)
    config = str(Path(grid.config_for(scale)).resolve())
    jobs = [
        TrainJob(config, list(p.overrides), str(point_dir(root.resolve(), grid, scale, p)), args.max_requeues)
        for p in points
    ]
    submitted = submit_jobs(jobs, args, root.resolve() / grid.name / scale / "slurm", f"{grid.name}-{scale}", None)
    metrics = ",".join(grid.metrics_for(scale))
    evals = [PointEvalJob(grid, scale, p, j.run_dir, metrics) for p, j in zip(points, jobs)]
    if dry_run:
        print(
            f"# job 2: evaluation array ({metrics}), task i after training task i succeeds (aftercorr); "
            "each records its point.json for `lfbm-repro summary`"
        )
        for i, e in enumerate(evals):
            print(f"#   task {i}: {' '.join(e.command())}")
        return 0
    from ..slurm.cli import make_executor
    from ..slurm.options import slurm_parameters

    first = submitted[0].job_id.split("_")[0]
    dependency = f"aftercorr:{first}" if len(jobs) > 1 else f"afterok:{first}"
    executor = make_executor(
        root.resolve() / grid.name / scale / "slurm",
        slurm_parameters(args, f"{grid.name}-{scale}-eval", dependency=dependency),
    )
    with executor.batch():
        ev = [executor.submit(e) for e in evals]
    print(f"submitted evaluation array {ev[0].job_id.split('_')[0]} (task i after training task i of {first})")
    return 0
