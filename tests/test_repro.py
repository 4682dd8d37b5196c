"""The reproduction harness end to end: a 2-point grid runs, writes its table with the paper's values
and the ordering verdicts, skips finished points on a rerun, and a killed run resumes to bitwise the
same results."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import PYTHON, ROOT
from launch import env, module

from lfbm_dist.repro.report import verdict
from lfbm_dist.repro.run import record_point
from lfbm_dist.repro.spec import GridError, load_grid

GRID = "tests/grids/tiny.yaml"
POINTS = ("prior-flow_seed-0", "prior-gaussian_seed-0")


def repro(*args, timeout=600, **extra):
    return module("lfbm_dist.repro", *args, timeout=timeout, **extra)


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
    _check_figures(straight / "tiny_grid/cpu", table, with_runs=True)
    data = json.loads((straight / "tiny_grid/cpu/summary.json").read_text())
    assert data["finished"] == 2 and data["orderings"][0]["verdict"] in (
        "reproduced",
        "same direction, within seed spread",
        "not reproduced",
    )
    # The grid's runs side by side in TensorBoard's HParams table: each run's swept prior and its seed
    # as a session's hyper-parameters, its evaluation's numbers as that run's scalars.
    from tb_read import hparams_of, read_events

    for point, kind in zip(POINTS, ("flow", "gaussian")):
        tb = straight / "tiny_grid/cpu" / point / "tensorboard"
        assert hparams_of(tb)["prior.kind"] == kind and hparams_of(tb)["train.seed"] == 0
        assert any(t.endswith("/recon_mse") for t in read_events(tb).Tags()["scalars"])
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
    env_a = json.loads((straight / "tiny_grid/cpu" / POINTS[0] / "point.json").read_text())["environment"]
    assert env_a["threads"] >= 1 and env_a["torch"] and env_a["device"] and env_a["commit"]


def _check_figures(out, table, with_runs):
    """The summary's figures: one per table (from the records), and from the runs' own TensorBoard
    events the sample sheet (one: both tables have the same rows) and the kimg curves."""
    from PIL import Image

    names = ["tiny_grid_cpu_table1.png", "tiny_grid_cpu_table2.png"]
    if with_runs:
        names += ["tiny_grid_cpu_table1_samples.png", "tiny_grid_cpu_curves.png"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    for name in names:
        assert f"]({name})" in table  # shown inline in summary.md
        with Image.open(out / name) as image:
            pixels = np.asarray(image.convert("L"))
        assert image.size[0] >= 400 and pixels.std() > 5  # drawn, not blank


def _record(root, point, recon_mse, threads=None):
    """A finished point as the harness records it (record_point), from a metrics.json written here."""
    grid = load_grid(GRID)
    match = next(p for p in grid.points("cpu") if p.name == point)
    run_dir = root / "tiny_grid/cpu" / point
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"recon_mse": recon_mse, "aggpost_gap_nats": 1.0}))
    record_point(grid, "cpu", match, run_dir, wall_s=1.0)
    if threads is not None:  # as if recorded on a machine with another thread count
        rec = json.loads((run_dir / "point.json").read_text())
        rec["environment"]["threads"] = threads
        (run_dir / "point.json").write_text(json.dumps(rec))


def test_summary_merges_roots_first_wins_and_names_mixed_environments(tmp_path):
    here, kept = tmp_path / "runs", tmp_path / "kept"
    _record(here, POINTS[0], 0.010)
    _record(kept, POINTS[0], 0.5)  # the same point under the second root: the first root's wins
    _record(kept, POINTS[1], 0.030, threads=97)
    proc = repro("summary", GRID, "--root", str(here), "--also", str(kept))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert "2 of 2 points finished" in table
    assert "| flow (LFBM) | 0.01 [0.011] |" in table and "| gaussian (ABP) | 0.03 [0.021] |" in table
    assert "- flow better than gaussian: **same direction, within seed spread**" in table
    assert "Points from 2 environments" in table and "threads 97" in table
    data = json.loads((here / "tiny_grid/cpu/summary.json").read_text())
    assert [r["results"]["recon_mse"] for r in data["records"]] == [0.010, 0.030]
    _check_figures(here / "tiny_grid/cpu", table, with_runs=False)  # records only: no events to read
    alone = repro("summary", GRID, "--root", str(here))
    assert "1 of 2 points finished" in alone.stdout and "environments" not in alone.stdout


def test_grid_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nconfig: c.yaml\nmetrics: [fid]\nscales: {cpu: {seeds: []}}\n")
    with pytest.raises(GridError, match="scale 'cpu' needs a non-empty 'seeds' list"):
        load_grid(bad)
    proc = repro("list", str(bad))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_every_grid_file_in_experiments_loads_with_distinct_points():
    grids = sorted((ROOT / "experiments").glob("*.yaml"))
    assert len(grids) >= 5
    for path in grids:
        grid = load_grid(path)
        for scale in grid.scales:
            names = [p.name for p in grid.points(scale)]
            assert names and len(set(names)) == len(names), (path, scale)
            assert (ROOT / grid.config_for(scale)).is_file(), (path, scale)


def test_verdicts():
    assert verdict([0.8, 0.82], [0.5, 0.52], higher_is_better=True) == "reproduced"
    assert verdict([0.8, 0.6], [0.7, 0.5], higher_is_better=True) == "same direction, within seed spread"
    assert verdict([0.4], [0.5], higher_is_better=True) == "not reproduced"
    assert verdict([10.0, 11.0], [30.0, 31.0], higher_is_better=False) == "reproduced"


def _inpainting_run(run_dir, masked, done, truth):
    """A run whose TensorBoard holds an inpainting grid as lfbm-evaluate writes it."""
    import torch
    import torchvision
    from torch.utils.tensorboard import SummaryWriter

    from lfbm_dist.training.evaluation import INPAINT_COLUMNS

    rows = torch.stack([masked, done, truth], dim=1).flatten(0, 1)
    grid = torchvision.utils.make_grid(rows, nrow=len(INPAINT_COLUMNS), normalize=True, value_range=(-1, 1))
    with SummaryWriter(run_dir / "tensorboard") as tb:
        tb.add_image("eval_inpaint/inpainting", grid, 1)


def test_inpainting_sheet_shows_masked_input_each_models_completion_and_the_original_in_columns(tmp_path):
    import torch
    from PIL import Image

    from lfbm_dist.repro.figures import inpainting_columns, sample_sheet
    from lfbm_dist.repro.spec import Table

    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(5, 3, 12, 12, generator=gen) * 2 - 1
    mask = torch.ones_like(truth)
    mask[..., 3:9, 3:9] = 0
    completions = {m: torch.rand(5, 3, 12, 12, generator=gen) * 2 - 1 for m in ("flow", "vae")}
    records = []
    for model, done in completions.items():
        _inpainting_run(tmp_path / model, truth * mask, done, truth)
        records.append({"seed": 0, "values": {"model": model}, "run_dir": str(tmp_path / model)})
    table = Table(metric="inpaint_mse", rows="model")
    assert sample_sheet(table, records, tmp_path / "sheet.png", "Table 3: first seed")
    with Image.open(tmp_path / "sheet.png") as image:
        assert image.size[0] >= 400 and np.asarray(image.convert("L")).std() > 5

    from tb_read import read_events

    def logged(model):
        events = read_events(tmp_path / model / "tensorboard")
        from io import BytesIO

        raw = events.Images("eval_inpaint/inpainting")[-1].encoded_image_string
        return np.asarray(Image.open(BytesIO(raw)).convert("RGB"))

    to_png = lambda t: ((t.permute(1, 2, 0) + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).numpy()  # noqa: E731 — as TB
    columns = inpainting_columns({m: logged(m) for m in completions})
    assert [name for name, _ in columns] == ["masked input", "flow", "vae", "original"]
    for (name, cells), source in zip(columns, [truth * mask, completions["flow"], completions["vae"], truth]):
        assert len(cells) == 5 and all(np.array_equal(c, to_png(s)) for c, s in zip(cells, source)), name
    # Models shown other inputs (another mask): each keeps its own three columns.
    _inpainting_run(tmp_path / "other", truth, completions["vae"], truth)
    apart = inpainting_columns({"flow": logged("flow"), "other": logged("other")})
    assert [name for name, _ in apart][:4] == [
        "flow: masked input",
        "flow: completion",
        "flow: original",
        "other: masked input",
    ]
