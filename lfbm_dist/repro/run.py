"""Run a grid locally, one point after another, resumably.

Each point is `lfbm-train` (with `train.resume=auto`) followed by `lfbm-evaluate`, in child
processes, into RUN_ROOT/<grid>/<scale>/<point>/. A point is finished when its `point.json` exists
(written last, atomically); a finished point is skipped. An interrupted point resumes from its
newest checkpoint, and because resume is exact and evaluation index-seeded, its results are
bitwise the same as an uninterrupted run's. A point whose directory was made with other settings
is refused rather than silently mixed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ..files import write_atomic
from .environment import environment
from .spec import Grid, GridError, Point, _text

POINT_FILE = "point.json"


def point_dir(root: Path, grid: Grid, scale: str, point: Point) -> Path:
    return root / grid.name / scale / point.name


def finished(run_dir: Path, point: Point) -> bool:
    """True if the point's results are complete; GridError if the directory holds another experiment."""
    marker = run_dir / POINT_FILE
    if not marker.is_file():
        return False
    try:
        saved = json.loads(marker.read_text())
    except ValueError:
        raise GridError(f"{marker}: unreadable; delete it to re-run the point") from None
    if saved.get("key") != point.key():
        raise GridError(
            f"{run_dir}: was run with other settings ({' '.join(saved.get('overrides', []))}); "
            "move it away or restore the grid file"
        )
    return True


def _child(cmd: list[str], log: Path) -> None:
    """Run a child, its output shown live and kept in the point's log; a failure stops the grid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(cmd)}\n")
        sink.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:  # type: ignore[union-attr]
            sys.stdout.write(line)
            sink.write(line)
        code = proc.wait()
    if code:
        raise GridError(f"{' '.join(cmd[2:4])} failed (exit {code}); its output is in {log}")


def run_point(grid: Grid, scale: str, point: Point, run_dir: Path) -> dict:
    python = sys.executable
    overrides = list(point.overrides)
    log = run_dir / "repro.log"
    started = time.time()
    _child(
        [
            python,
            "-m",
            "lfbm_dist.train",
            "--config",
            point.config,
            *overrides,
            f"train.run_dir={run_dir}",
            "train.resume=auto",
        ],
        log,
    )
    for args in evaluate_args(grid, scale, point, run_dir):
        _child([python, "-m", "lfbm_dist.evaluate", *args], log)
    return record_point(grid, scale, point, run_dir, time.time() - started)


def evaluate_args(grid: Grid, scale: str, point: Point, run_dir: Path) -> list[list[str]]:
    """The lfbm-evaluate calls of a point. The grid's metrics with the raw weights of the last step (the
    paper's protocol, and every point recorded before weight averaging existed); with ema_lengths, FID
    of the raw weights, the half-life EMA and each post-hoc EMA length on the same samples."""
    common = ["--run", str(run_dir), "--out", str(run_dir / "metrics.json"), "--weights", "raw"]
    calls = [[*common, "--metrics", ",".join(grid.metrics_for(scale)), *point.overrides]]
    if grid.ema_lengths:
        lengths = ",".join(f"{x:g}" for x in grid.ema_lengths)
        calls.append([*common, "--metrics", "fid", "--ema-length", lengths, *point.overrides])
    return calls


def record_point(grid: Grid, scale: str, point: Point, run_dir: Path, wall_s: float) -> dict:
    """Write RUN_DIR/point.json from its metrics.json: written last, its presence means "finished"."""
    record = {
        "grid": grid.name,
        "scale": scale,
        "point": point.name,
        "key": point.key(),
        "values": point.values,
        "seed": point.seed,
        "overrides": list(point.overrides),
        "config": point.config,
        "results": json.loads((run_dir / "metrics.json").read_text()),
        "wall_s_last_attempt": round(wall_s, 1),
        "environment": environment(),  # bitwise repeatability holds within one environment only
    }
    write_atomic(run_dir / POINT_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def select(grid: Grid, scale: str, only: list[str] | None = None, where: list[str] | None = None) -> list[Point]:
    """The scale's points, narrowed to named points and/or axis values (`--where prior=flow,gaussian`)."""
    points = grid.points(scale)
    if only:
        unknown = set(only) - {p.name for p in points}
        if unknown:
            raise GridError(f"--point: unknown {sorted(unknown)}; this scale has: {', '.join(p.name for p in points)}")
        points = [p for p in points if p.name in only]
    for clause in where or []:
        axis, _, values = clause.partition("=")
        if axis not in grid.axes or not values:
            raise GridError(f"--where: expected AXIS=V1,V2 with AXIS one of {sorted(grid.axes)}, got {clause!r}")
        allowed = set(values.split(","))
        points = [p for p in points if _text(p.values[axis]) in allowed]
    return points


def run_grid(grid: Grid, scale: str, root: Path, only: list[str] | None = None, where: list[str] | None = None) -> int:
    """Run every unfinished point in order. Returns how many were run."""
    points = select(grid, scale, only, where)
    ran = 0
    for i, point in enumerate(points, 1):
        run_dir = point_dir(root, grid, scale, point)
        if finished(run_dir, point):
            print(f"[{i}/{len(points)}] {point.name}: finished, skipped", flush=True)
            continue
        print(f"[{i}/{len(points)}] {point.name}: running -> {run_dir}", flush=True)
        run_point(grid, scale, point, run_dir)
        ran += 1
    return ran
