"""Reproduce the paper's tables: run a grid locally (sequential, resumable) or on Slurm, then
summarize it with the paper's values beside ours.

    lfbm-repro list    experiments/table4_anomaly.yaml --scale cpu
    lfbm-repro run     experiments/table4_anomaly.yaml --scale cpu            # skips finished points
    lfbm-repro summary experiments/table4_anomaly.yaml --scale cpu            # markdown table + verdicts
    lfbm-repro run     experiments/table4_anomaly.yaml --scale paper --slurm --partition gpu --dry-run

Runs go to RUN_ROOT/<grid>/<scale>/<point>/ (default RUN_ROOT: runs/repro); the summary to
RUN_ROOT/<grid>/<scale>/summary.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .spec import load_grid


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfbm-repro", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("list", "print the points of a scale and which are finished"),
        ("run", "run every unfinished point (locally, or as a Slurm array with --slurm)"),
        ("summary", "write summary.md / summary.json of the finished points"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("grid", help="a grid file, e.g. experiments/table4_anomaly.yaml")
        p.add_argument("--scale", default="cpu", help="a scale named in the grid file (cpu | paper)")
        p.add_argument("--root", type=Path, default=Path("runs/repro"), help="parent of the grids' run directories")
        if name == "run":
            p.add_argument("--point", action="append", help="run only this point (repeatable)")
            p.add_argument(
                "--where",
                action="append",
                metavar="AXIS=V1,V2",
                help="run only the points with these axis values (repeatable)",
            )
            p.add_argument("--slurm", action="store_true", help="submit a Slurm array instead of running here")
            p.add_argument("--dry-run", action="store_true", help="with --slurm: print the sbatch scripts only")
            p.add_argument("--partition", help="with --slurm")
            p.add_argument("--account", help="with --slurm")
        if name == "summary":
            p.add_argument("--json", action="store_true", help="print the JSON summary instead of markdown")
            p.add_argument(
                "--also",
                action="append",
                type=Path,
                default=[],
                metavar="ROOT",
                help="another root of finished points, e.g. docs/repro/points (repeatable; a point under "
                "several roots is taken from the first); the summary is still written under --root",
            )
    return parser


def _list(grid, args) -> int:
    from .run import finished, point_dir

    for point in grid.points(args.scale):
        done = finished(point_dir(args.root, grid, args.scale, point), point)
        print(f"{'done' if done else 'todo'}  {point.name}  {' '.join(point.overrides)}")
    return 0


def _run(grid, args) -> int:
    if args.slurm:
        from .slurm import submit_grid

        return submit_grid(grid, args.scale, args.root, args.partition, args.account, args.dry_run, args.where)
    from .run import run_grid

    ran = run_grid(grid, args.scale, args.root, args.point, args.where)
    print(
        f"{grid.name} ({args.scale}): {ran} point(s) run; summary: lfbm-repro summary {args.grid} --scale {args.scale}",
        flush=True,
    )
    return 0


def _summary(grid, args) -> int:
    from ..grids import write_summary
    from .figures import write_figures
    from .report import collect, summarize

    command = f"lfbm-repro run {args.grid} --scale {args.scale}"
    roots = [args.root, *args.also]
    markdown, summary = summarize(grid, args.scale, roots, command)
    out = args.root / grid.name / args.scale
    figures = write_figures(grid, args.scale, collect(grid, args.scale, roots), out)
    if figures:
        markdown += "\n" + "\n\n".join(figures) + "\n"
    write_summary(out, markdown, summary)
    print(json.dumps(summary, indent=2, sort_keys=True) if args.json else markdown, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .. import cli, logs

    args = _parser().parse_args(argv)
    logs.setup()
    commands = {"list": _list, "run": _run, "summary": _summary}
    return cli.run(lambda: commands[args.command](load_grid(args.grid), args))


if __name__ == "__main__":
    sys.exit(main())
