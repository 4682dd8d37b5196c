"""The reproduction harness end to end: a 2-point grid runs, writes its table with the paper's values
and the ordering verdicts, skips finished points on a rerun, and a killed run resumes to bitwise the
same results."""

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import PYTHON, ROOT
from launch import env

from lfbm_dist.repro.report import verdict
from lfbm_dist.repro.spec import GridError, load_grid

GRID = "tests/grids/tiny.yaml"
POINTS = ("prior-flow_seed-0", "prior-gaussian_seed-0")


def repro(*args, timeout=600, **extra):
    return subprocess.run(
        [PYTHON, "-m", "lfbm_dist.repro", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**extra),
    )


def _results(root):
    return {p: json.loads((root / "tiny_grid/cpu" / p / "point.json").read_text())["results"] for p in POINTS}


@pytest.mark.slow
def test_grid_runs_writes_its_table_skips_finished_points_and_resumes_bitwise(tmp_path):
    straight = tmp_path / "straight"
    proc = repro("run", GRID, "--root", str(straight))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = repro("summary", GRID, "--root", str(straight))
    assert summary.returncode == 0, summary.stderr
    table = (straight / "tiny_grid/cpu/summary.md").read_text()
    assert table == summary.stdout
    assert (
        "| flow (LFBM) |" in table and "[0.011]" in table and "[0.021]" in table and "2 of 2 points finished" in table
    )
    assert "- flow better than gaussian: **" in table
    data = json.loads((straight / "tiny_grid/cpu/summary.json").read_text())
    assert data["finished"] == 2 and data["orderings"][0]["verdict"] in (
        "reproduced",
        "same direction, within seed spread",
        "not reproduced",
    )
    again = repro("run", GRID, "--root", str(straight))
    assert again.stdout.count("finished, skipped") == 2 and "running" not in again.stdout
    # Kill the harness inside the second point's training, then run it again.
    killed = tmp_path / "killed"
    cmd = [PYTHON, "-m", "lfbm_dist.repro", "run", GRID, "--root", str(killed)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env(LFBM_FAULT_STEP_SLEEP="0.5"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    second = killed / "tiny_grid/cpu" / POINTS[1] / "checkpoints"
    deadline = time.time() + 300
    while not list(second.glob("ckpt-*[0-9]")) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert (killed / "tiny_grid/cpu" / POINTS[0] / "point.json").is_file()
    assert not (killed / "tiny_grid/cpu" / POINTS[1] / "point.json").is_file()
    resumed = repro("run", GRID, "--root", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "prior-flow_seed-0: finished, skipped" in resumed.stdout and "resumed from ckpt-" in resumed.stdout
    a, b = _results(straight), _results(killed)
    assert a == b  # every number bitwise the same as the uninterrupted grid's


def test_grid_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nconfig: c.yaml\nmetrics: [fid]\nscales: {cpu: {seeds: []}}\n")
    with pytest.raises(GridError, match="scale 'cpu' needs a non-empty 'seeds' list"):
        load_grid(bad)
    proc = repro("list", str(bad))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_verdicts():
    assert verdict([0.8, 0.82], [0.5, 0.52], higher_is_better=True) == "reproduced"
    assert verdict([0.8, 0.6], [0.7, 0.5], higher_is_better=True) == "same direction, within seed spread"
    assert verdict([0.4], [0.5], higher_is_better=True) == "not reproduced"
    assert verdict([10.0, 11.0], [30.0, 31.0], higher_is_better=False) == "reproduced"
