"""The Slurm launcher against a real single-node Slurm cluster (slurmctld + slurmd + munge)."""

import json
import subprocess
import time

import pytest
import yaml
from launch import env, script
from launch import ok as _ok
from slurm_cluster import SlurmCluster, SlurmUnavailable

from lfbm_dist import state_schema as schema

pytestmark = pytest.mark.slow
LAUNCHER = "launchers/slurm.py"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"no Slurm cluster: {exc}")
    yield c
    c.stop()


def launcher(*args, timeout=600, **extra_env):
    import os

    return script(LAUNCHER, *args, timeout=timeout, SLURM_CONF=os.environ["SLURM_CONF"], **extra_env)


def test_two_task_cpu_training_job_then_resubmitted_on_one_task_resumes_the_run(cluster, tmp_path):
    """A 2-task job trains; resubmitted with the same --name on another allocation (1 task, as a
    requeued or resubmitted job often gets), it continues the run with its own global batch."""
    common = ["train", "--config", "configs/test_tiny.yaml", "--cpus-per-task", "1", "--time", "00:10:00",
              "--out", str(tmp_path), "--name", "job2", "--wait"]  # fmt: skip
    _ok(launcher(*common, "--tasks-per-node", "2"))
    run_dir = tmp_path / "job2"
    state = schema.trainer_state(run_dir)
    assert state[schema.STEPS_DONE] == 4 and state[schema.IMAGES_SEEN] == 64  # 2 ranks × 8 per step
    logs = "".join(p.read_text() for p in (run_dir / "slurm").glob("*_0_log.out"))
    assert "2 rank(s)" in logs
    _ok(launcher(*common, "--tasks-per-node", "1", "train.total_kimg=0.128"))
    state = schema.trainer_state(run_dir)
    assert state[schema.IMAGES_SEEN] == 128 and state[schema.GLOBAL_BATCH] == 16  # the run's own global batch, kept
    logs = "".join(p.read_text() for p in (run_dir / "slurm").glob("*_0_log.*"))
    assert "resumed from ckpt-000000000064" in logs and "note: global batch 16 on 1 rank(s)" in logs


def test_array_sweep_and_summary(cluster, tmp_path):
    _ok(
        launcher(
            "sweep",
            "--config",
            "configs/test_tiny.yaml",
            "--grid",
            "langevin.num_steps=1,2,3",
            "--tasks-per-node",
            "1",
            "--cpus-per-task",
            "1",
            "--max-parallel",
            "2",
            "--time",
            "10",
            "--out",
            str(tmp_path),
            "--name",
            "sw",
            "--wait",
        )
    )
    summary = _ok(launcher("summary", "--root", str(tmp_path / "sw"), "--json"))
    rows = json.loads(summary.stdout)
    assert [r["point"] for r in rows] == ["num_steps-1", "num_steps-2", "num_steps-3"]
    assert all(r[schema.STEPS_DONE] == 8 for r in rows)
    assert (tmp_path / "sw/summary.md").read_text().count("| num_steps-") == 3
    # The sweep in one HParams table: every task's swept setting is its run's session hyper-parameter.
    from tb_read import hparams_of

    for n in (1, 2, 3):
        assert hparams_of(tmp_path / "sw" / f"num_steps-{n}" / "tensorboard")["langevin.num_steps"] == n
    # One compile cache for the whole array: the next task starts with the graphs the others compiled.
    for point in ("num_steps-1", "num_steps-3"):
        saved = yaml.safe_load((tmp_path / "sw" / point / "config.yaml").read_text())
        assert saved["perf"]["compile_cache"] == str(tmp_path / "sw" / "compile_cache")


def test_preemption_signal_requeues_and_resumes_to_the_same_step_count(cluster, tmp_path):
    args = [
        "train",
        "--config",
        "configs/test_tiny.yaml",
        "--tasks-per-node",
        "1",
        "--cpus-per-task",
        "1",
        "--time",
        "10",
        "--out",
        str(tmp_path),
        "--name",
        "pre",
        "--max-requeues",
        "2",
        "train.total_kimg=0.192",
        "train.snapshot_every_kimg=0.032",
    ]
    proc = _ok(launcher(*args, LFBM_FAULT_STEP_SLEEP="0.4"))
    job_id = proc.stdout.split("submitted training job ")[1].split()[0]
    run_dir = tmp_path / "pre"
    deadline = time.time() + 300
    while not list((run_dir / "checkpoints").glob("ckpt-*[0-9]")) and time.time() < deadline:
        time.sleep(0.2)
    assert list((run_dir / "checkpoints").glob("ckpt-*[0-9]")), "no checkpoint before the signal"
    # What Slurm sends before the time limit / on preemption (submitit asks for USR2).
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, env=env(SLURM_CONF=str(cluster.conf)))
    while time.time() < deadline:
        state_file = run_dir / schema.TRAINER_STATE
        if state_file.is_file() and schema.trainer_state(run_dir)[schema.STEPS_DONE] == 24:
            break
        time.sleep(0.5)
    state = schema.trainer_state(run_dir)
    assert state[schema.STEPS_DONE] == 24 and state[schema.IMAGES_SEEN] == 192  # same as an uninterrupted run
    requeues = json.loads((run_dir / "requeues.json").read_text())
    assert len(requeues) == 1 and requeues[0]["job"] == job_id
    logs = "".join(p.read_text() for p in (run_dir / "slurm").glob("*_log.*"))
    assert "requeue 1/2" in logs and "resumed from" in logs


def test_bad_options_one_line(tmp_path):
    for args, message in (
        (["--time", "25h"], "--time: not a Slurm time"),
        (["--sbatch", "comment=$(id)"], "--sbatch: expected key=value with a plain value"),
        (["--nodes", "0"], "--nodes, --tasks-per-node and --cpus-per-task must be >= 1"),
        (["langevin.sigma=0"], "langevin.sigma must be > 0"),
    ):
        proc = script(
            LAUNCHER, "train", "--config", "configs/test_tiny.yaml", "--out", str(tmp_path), "--dry-run", *args
        )
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


def test_dry_run_prints_the_sbatch_script(tmp_path):
    proc = script(
        LAUNCHER,
        "train",
        "--config",
        "configs/celebahq256.yaml",
        "--nodes",
        "4",
        "--gpus-per-node",
        "8",
        "--partition",
        "gpu",
        "--time",
        "24:00:00",
        "--account",
        "ml",
        "--out",
        str(tmp_path),
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1440",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --account=ml",
    ):
        assert line in proc.stdout


def test_summary_refuses_incomparable_fids(tmp_path):
    for name, network in (("a", "net-1"), ("b", "net-2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("{}\n")
        (tmp_path / name / "metrics.json").write_text(
            json.dumps({"fid": 10.0, "fid_network": network, "fid_image_resolution": 64, "fid_num_samples": 100})
        )
    proc = script(LAUNCHER, "summary", "--root", str(tmp_path))
    assert proc.returncode == 2 and "not comparable: fid_network" in proc.stderr


def test_elastic_job_restarts_a_failed_rank_inside_the_allocation(cluster, tmp_path):
    """lfbm-slurm train --elastic 1:1: one torch elastic agent per node (here the one node, 2 workers);
    rank 1 raises once after step 5; the agent restarts the workers inside the same allocation (no
    requeue, no human), they resume from the newest checkpoint by themselves and finish."""
    dry = _ok(launcher("train", "--config", "configs/test_tiny.yaml", "--elastic", "1:2", "--tasks-per-node", "2",
                       "--out", str(tmp_path), "--dry-run"))  # fmt: skip
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --no-kill", "--kill-on-bad-exit=0"):
        assert line in dry.stdout, line
    assert "torch.distributed.run --nnodes 1:2 --nproc_per_node 2 --max-restarts 3 --rdzv-backend c10d" in dry.stdout
    bad = launcher("train", "--config", "configs/test_tiny.yaml", "--elastic", "2:1", "--dry-run")
    assert bad.returncode == 2 and "--elastic: expected MIN:MAX" in bad.stderr
    _ok(
        launcher(
            "train", "--config", "configs/test_tiny.yaml", "--elastic", "1:1", "--tasks-per-node", "2",
            "--cpus-per-task", "1", "--time", "00:10:00", "--out", str(tmp_path), "--name", "el", "--wait",
            "train.total_kimg=0.128", "train.snapshot_every_kimg=0.032",
            LFBM_FAULT_RAISE_ONCE="5:1",
        )
    )  # fmt: skip
    run_dir = tmp_path / "el"
    state = schema.trainer_state(run_dir)
    assert state[schema.STEPS_DONE] == 8 and state[schema.IMAGES_SEEN] == 128
    logs = "".join(p.read_text() for p in (run_dir / "slurm").glob("*_log.*"))
    assert "injected failure of rank 1 after step 5" in logs
    assert "resumed from ckpt-000000000064" in logs  # the agent's restart, inside the allocation
    assert not (run_dir / "requeues.json").exists()  # no Slurm requeue was needed
