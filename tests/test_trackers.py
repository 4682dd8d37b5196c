"""Experiment trackers through Accelerate (train.log_with), for real and offline: MLflow (a real `mlflow
server` on a loopback port, over HTTP, read back with MlflowClient; and each store a user can name
without one: MLflow's default, sqlite, a file store refused in one line or opted into) and W&B (offline
run folders, read back from their records) get the same scalars on the same images-seen axis as
TensorBoard, the config as parameters and the image grids; a run killed with SIGKILL and resumed
continues the same tracker runs with no step twice; lfbm-evaluate adds its results to them; a tracker
whose package is missing is one line before anything is made; the swept settings reach TensorBoard's
HParams plugin."""

import json
import signal

import numpy as np
import pytest
from conftest import ROOT
from launch import free_port, module, run
from launch import ok as _ok
from mlflow_server import mlflow_server
from tb_read import hparams_of, read_events, scalar_series
from wandb_read import run_contents

from lfbm_dist.config import load_config

TINY = ["--config", "configs/test_tiny.yaml"]


@pytest.mark.slow
def test_mlflow_and_wandb_get_what_tensorboard_gets_and_a_sigkilled_run_continues_them(tmp_path):
    with mlflow_server(tmp_path / "mlflow") as uri:
        _trackers_continue(tmp_path, uri)


def _trackers_continue(tmp_path, uri: str) -> None:
    from mlflow import MlflowClient

    offline = {
        "MLFLOW_TRACKING_URI": uri,  # the server, over HTTP
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    run_dir = tmp_path / "run"
    args = [*TINY, f"train.run_dir={run_dir}", "train.total_kimg=0.064", "train.log_every_kimg=0.008"]
    args += ["train.snapshot_every_kimg=0.032", "train.log_with=[tensorboard,mlflow,wandb]", "optim.lr_prior=0.0005"]
    # Killed while writing the final checkpoint: the trackers hold steps 8…64, the newest checkpoint is 32.
    killed = run("single", *args, LFBM_FAULT_KILL_IN_SAVE="64", **offline)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ids = json.loads((run_dir / "trackers.json").read_text())
    assert set(ids) == {"mlflow", "wandb"}
    resumed = _ok(run("single", *args, "train.resume=auto", **offline))
    assert "resumed from ckpt-000000000032" in resumed.stdout and f"MLflow:      run {ids['mlflow']}" in resumed.stdout
    assert json.loads((run_dir / "trackers.json").read_text()) == ids  # the same tracker runs continued
    _ok(module("lfbm_dist.evaluate", "--run", str(run_dir), "--metrics", "recon", "eval.recon_samples=8",
               "langevin.test_num_steps=2", **offline))  # fmt: skip

    events = read_events(run_dir / "tensorboard")
    tags = events.Tags()["scalars"]
    assert {"loss/generator", "recon_mse", "log_p_z", "lr/generator"} <= set(tags)
    client = MlflowClient(uri)
    (mlflow_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert mlflow_run.info.run_id == ids["mlflow"]
    for tag in tags:  # MLflow's history is TensorBoard's: same steps, same (float32) values, no step twice
        history = sorted((m.step, float(np.float32(m.value))) for m in client.get_metric_history(ids["mlflow"], tag))
        if tag == "images_per_sec":  # a clock reading: the killed run's steps 40…64 were measured anew
            history, tb = [s for s, _ in history], [s for s, _ in scalar_series(events, tag)]
            assert history == tb, tag
            continue
        assert history == scalar_series(events, tag), tag
    assert [s for s, _ in scalar_series(events, "recon_mse")] == list(range(8, 65, 8))
    recon = [t for t in tags if t.startswith("eval/recon") and t.endswith("/recon_mse")]
    assert len(recon) == 1 and scalar_series(events, recon[0])[0][0] == 64  # lfbm-evaluate's, at the checkpoint
    params = mlflow_run.data.params
    assert params["optim.lr_prior"] == "0.0005" and params["train.seed"] == "0" and params["langevin.num_steps"]
    images = [a.path for a in client.list_artifacts(ids["mlflow"], "images")]
    assert any("reconstructions" in p for p in images) and any("samples_prior" in p for p in images), images

    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 3 and all(f.name.endswith(ids["wandb"]) for f in folders)  # train, resume, evaluate
    # W&B buffers in its service process, which goes with a SIGKILLed run: the resumed run and the
    # evaluation are read back (a W&B server would have received the killed run's steps as they came).
    (run_id, config, history), (eval_id, _, evaluated) = run_contents(folders[1]), run_contents(folders[2])
    assert run_id == eval_id == ids["wandb"]
    assert config["optim.lr_prior"] == 0.0005 and config["train.seed"] == 0
    assert {"loss/generator", "recon_mse", "log_p_z"} <= set(history)
    assert [s for s, _ in history["recon_mse"]] == list(range(40, 65, 8))  # after the checkpoint at 32
    assert dict(history["recon_mse"]) == {s: v for s, v in scalar_series(events, "recon_mse") if s >= 40}
    assert [s for s, _ in evaluated[recon[0]]] == [64]
    assert hparams_of(run_dir / "tensorboard") == {
        "config": "configs/test_tiny.yaml",
        "train.total_kimg": 0.064,
        "optim.lr_prior": 0.0005,
    }


def _mlflow_history_is_tensorboards(store: str, run_dir) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(store)
    (mlflow_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert mlflow_run.info.run_id == json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    events = read_events(run_dir / "tensorboard")
    history = client.get_metric_history(mlflow_run.info.run_id, "recon_mse")
    assert sorted((m.step, float(np.float32(m.value))) for m in history) == scalar_series(events, "recon_mse")


@pytest.mark.slow
def test_mlflow_runs_on_its_default_store_and_sqlite_and_a_file_store_is_one_line_with_the_fix(tmp_path):
    """Each store a user can name with no server: none (MLflow 3's default, sqlite:///mlflow.db in the
    working folder), sqlite:///, a file store (refused with the fix before anything is made; accepted
    with MLflow's opt-in variable); and a server that does not answer, refused likewise."""
    config = ["--config", str(ROOT / "configs/test_tiny.yaml"), "train.total_kimg=0.016", "train.log_every_kimg=0.008"]
    config.append("train.log_with=[tensorboard,mlflow]")

    def train(name: str, **store):
        folder = tmp_path / name
        folder.mkdir()
        return folder, module("lfbm_dist.train", *config, f"train.run_dir={folder / 'run'}", cwd=folder, **store)

    default, proc = train("default", MLFLOW_TRACKING_URI=None, MLFLOW_ALLOW_FILE_STORE=None)
    _ok(proc)
    _mlflow_history_is_tensorboards(f"sqlite:///{default / 'mlflow.db'}", default / "run")
    sqlite, proc = train("sqlite", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'sqlite/runs.db'}")
    _ok(proc)
    _mlflow_history_is_tensorboards(f"sqlite:///{sqlite / 'runs.db'}", sqlite / "run")

    store = (tmp_path / "file/mlruns").as_uri()
    folder, refused = train("file", MLFLOW_TRACKING_URI=store, MLFLOW_ALLOW_FILE_STORE=None)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and errors == [refused.stderr.strip().splitlines()[-1]], refused.stderr
    assert "MLFLOW_TRACKING_URI=sqlite:///mlflow.db" in errors[0] and "MLFLOW_ALLOW_FILE_STORE=true" in errors[0]
    assert not (folder / "run").exists() and not (folder / "mlruns").exists()
    opted_in = {"MLFLOW_TRACKING_URI": store, "MLFLOW_ALLOW_FILE_STORE": "true"}
    _ok(module("lfbm_dist.train", *config, f"train.run_dir={folder / 'run'}", cwd=folder, **opted_in))
    assert (folder / "mlruns").is_dir() and (folder / "run/trackers.json").is_file()

    port = free_port()  # a loopback port with nothing listening (bound, then closed)
    _, refused = train("server", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    (error,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and f"http://127.0.0.1:{port} did not answer" in error, refused.stderr
    assert "mlflow server --backend-store-uri sqlite:///mlflow.db" in error


@pytest.mark.slow
def test_a_tracker_whose_package_is_missing_is_one_line_and_nothing_is_made(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("aim") is None, "this test needs a tracker package that is not installed"
    proc = run("single", *TINY, f"train.run_dir={tmp_path / 'r'}", "train.log_with=[tensorboard,aim]")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: train.log_with=aim: the aim package is not installed; pip install aim"], proc.stderr
    assert not (tmp_path / "r").exists()


def test_the_hparams_are_the_settings_given_on_the_command_line_that_change_what_is_learned():
    from lfbm_dist.training.session import hparams

    argv = ["lfbm-train", "--config", "configs/test_tiny.yaml", "langevin.step_size=0.2", "train.run_dir=/x"]
    argv += ["train.log_every_kimg=0.5", "train.resume=auto", "data.hflip=false", "--dry-run"]
    cfg = load_config("configs/test_tiny.yaml", [a for a in argv if "=" in a])
    assert hparams(cfg, argv) == {"config": "configs/test_tiny.yaml", "langevin.step_size": 0.2, "data.hflip": False}
