"""Experiment trackers through Accelerate (train.log_with): TensorBoard, MLflow, W&B and the others
Accelerate drives, written from rank 0 on one step axis (images seen). Accelerate's own tracker classes
do the writing; this module only decides what each gets:

- TensorBoard writes to RUN_DIR/tensorboard (a resumed run purges what the interrupted one wrote after
  its checkpoint, as before), and the run's hyper-parameters go to the HParams plugin as a session
  start (no experiment summary: TensorBoard then builds one table from every run under --logdir, so a
  sweep's runs line up however their parameters differ). Accelerate's own `store_init_configuration`
  for TensorBoard is not used: it writes a time-stamped second run per start.
- W&B and MLflow get the resolved config as parameters; their run ids are kept in RUN_DIR/trackers.json,
  so a resume, a requeue or `lfbm-evaluate` continues the same tracker run. MLflow's metric history is
  append-only: a resumed run does not send again the steps the interrupted run already sent (an exact
  resume would send the same values).

Only the engine imports this (Accelerate stays behind the engine); the trainer's Observer talks to the
`Trackers` object the engine hands it."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ...config import ConfigError
from ...files import write_atomic

STATE_FILE = "trackers.json"  # RUN_DIR: the tracker runs' ids a resume continues
PROJECT = "lfbm_dist"  # W&B project / MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say
# name: (module to import, pip command when it is missing)
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install -e '.[wandb]'"),
    "mlflow": ("mlflow", "pip install -e '.[mlflow]'"),
    "comet_ml": ("comet_ml", "pip install comet_ml"),
    "aim": ("aim", "pip install aim"),
    "clearml": ("clearml", "pip install clearml"),
    "dvclive": ("dvclive", "pip install dvclive"),
    "swanlab": ("swanlab", "pip install swanlab"),
    "trackio": ("trackio", "pip install trackio"),
}


def check_installed(names: list[str]) -> None:
    """One line naming the pip command for the first tracker whose package is missing (Accelerate
    itself would drop it with a warning and train on untracked), and for an MLflow store that MLflow
    would refuse or cannot reach; before anything is made."""
    for name in names:
        module, pip = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.log_with={name}: the {module} package is not installed; {pip}")
    if "mlflow" in names:
        check_mlflow_store()


SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SERVER_HINT = "mlflow server --backend-store-uri sqlite:///mlflow.db --host 0.0.0.0 --port 5000"


def check_mlflow_store() -> str:
    """The tracking URI MLflow will use (MLFLOW_TRACKING_URI, else its default: sqlite:///mlflow.db in
    the working folder, or ./mlruns where that folder exists), refused in one line naming the fix where
    MLflow would refuse it later with a traceback: a file store without MLflow's opt-in variable (in
    maintenance mode since MLflow 3), an SQL store without MLflow's SQL support (mlflow-skinny), a
    server that does not answer."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    scheme = urlparse(uri).scheme.split("+")[0]
    where = f"train.log_with=mlflow: the MLflow store {uri}"
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
            raise ConfigError(
                f"{where} is a file store, which MLflow 3 refuses (maintenance mode); use "
                "MLFLOW_TRACKING_URI=sqlite:///mlflow.db (or a server, http://HOST:5000), or set "
                "MLFLOW_ALLOW_FILE_STORE=true to keep the file store"
            )
    elif scheme in SQL_SCHEMES:
        if importlib.util.find_spec("sqlalchemy") is None or importlib.util.find_spec("alembic") is None:
            raise ConfigError(f"{where} needs MLflow's SQL store (the full mlflow package); pip install -e '.[mlflow]'")
        path = Path(uri.partition(":///")[2]) if scheme == "sqlite" else None
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"{where}: the folder {path.parent} does not exist; create it or fix MLFLOW_TRACKING_URI")
    elif scheme in ("http", "https"):
        _check_server(uri, where)
    return uri


def _check_server(uri: str, where: str) -> None:
    """MLflow's /health endpoint answers, within seconds (not MLflow's own retries over minutes)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=15) as answer:
            if answer.status == 200:
                return
            problem = f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise ConfigError(f"{where} did not answer ({problem}); start it ({SERVER_HINT}) or fix MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class TrackerSpec:
    names: tuple[str, ...]
    run_dir: Path
    step: int  # images seen where this process starts logging
    purge: bool  # TensorBoard drops events after `step` (a resumed training run; never an evaluation)
    continuing: bool  # a resume or an evaluation: the tracker runs in RUN_DIR/trackers.json go on
    params: dict[str, Any]  # the resolved config, flattened: the trackers' parameters
    hparams: dict[str, Any]  # what distinguishes this run in a sweep: the HParams table's columns


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def _ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / STATE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}  # unreadable: new tracker runs (the run's own checkpoints are what resume relies on)


def build(spec: TrackerSpec) -> list:
    """Accelerate tracker objects for spec.names (not started: Accelerator.init_trackers starts them)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, TensorBoardTracker, WandBTracker

    ids = _ids(spec.run_dir) if spec.continuing else {}
    made = []
    for name in spec.names:
        if name == "tensorboard":
            # purge: hide what the interrupted run wrote *after* the checkpoint (the checkpoint's own
            # step was logged before it was saved, and the resumed run does not log it again)
            purge_step = spec.step + 1 if spec.purge else None
            made.append(TensorBoardTracker("tensorboard", spec.run_dir, purge_step=purge_step))
        elif name == "wandb":
            spec.run_dir.mkdir(parents=True, exist_ok=True)  # before wandb.init: it falls back to /tmp
            made.append(
                WandBTracker(
                    os.environ.get("WANDB_PROJECT", PROJECT),
                    name=spec.run_dir.name,
                    dir=str(spec.run_dir),
                    id=ids.get("wandb") or secrets.token_hex(4),
                    resume="allow",
                )
            )
        elif name == "mlflow":
            made.append(_mlflow_tracker()(PROJECT, run_id=ids.get("mlflow"), run_name=spec.run_dir.name))
        else:  # the others, as Accelerate makes them (a logging folder for those that need one)
            cls = LOGGER_TYPE_TO_CLASS[name]
            made.append(cls(PROJECT, spec.run_dir) if cls.requires_logging_directory else cls(PROJECT))
    return made


def _mlflow_tracker():
    from accelerate.tracking import MLflowTracker

    class ContinuingMLflowTracker(MLflowTracker):
        """MLflowTracker that, in a continued run, skips each metric's steps the run already holds."""

        logged_through: dict[str, int] = {}

        def log(self, values: dict, step: int | None = None, **kwargs) -> None:
            fresh = {k: v for k, v in values.items() if step is None or step > self.logged_through.get(k, -1)}
            if fresh:
                super().log(fresh, step=step, **kwargs)

        def log_images(self, values: dict, step: int | None = None, **kwargs) -> None:
            import mlflow

            for tag, images in values.items():
                for image in images:
                    mlflow.log_image(image, key=tag.replace("/", "_"), step=step)

    return ContinuingMLflowTracker


class Trackers:
    """What the trainer and lfbm-evaluate log through (rank 0 only; other ranks hold an empty one)."""

    def __init__(self, accelerator: Any, spec: TrackerSpec | None):
        self.trackers = list(accelerator.trackers) if spec is not None else []
        self.spec = spec
        if spec is None:
            return
        saved = _ids(spec.run_dir)
        ids = dict(saved) if spec.continuing else {}
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                if spec.hparams:  # a training start; an evaluation adds scalars to the same session
                    _hparams_session(tracker.writer, spec.hparams)
            elif tracker.name == "mlflow":
                _continue_mlflow(tracker, spec.params, tracker.active_run.info.run_id == ids.get("mlflow"))
                ids["mlflow"] = tracker.active_run.info.run_id
            else:
                tracker.store_init_configuration(spec.params)
                if tracker.name == "wandb":
                    ids["wandb"] = tracker.run.id
        if ids and ids != saved:
            write_atomic(spec.run_dir / STATE_FILE, json.dumps(ids, indent=2, sort_keys=True) + "\n")

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        """grid: (C, H, W) in [0, 1], one image (a grid made by the caller)."""
        if not self.trackers:
            return
        hwc = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(tag, grid, global_step=step)
                tracker.writer.flush()
            elif hasattr(tracker, "log_images"):
                tracker.log_images({tag: [hwc]}, step=step)

    def describe(self) -> list[str]:
        """Where each tracker's run is, for the end-of-run lines."""
        if self.spec is None:
            return []
        lines = []
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                lines.append(f"TensorBoard: tensorboard --logdir {self.spec.run_dir / 'tensorboard'}")
            elif tracker.name == "mlflow":
                import mlflow

                lines.append(f"MLflow:      run {tracker.active_run.info.run_id} at {mlflow.get_tracking_uri()}")
            elif tracker.name == "wandb":
                lines.append(f"W&B:         run {tracker.run.id} in {Path(tracker.run.dir).parent}")
            else:
                lines.append(f"{tracker.name}: logged")
        return lines


def _hparams_session(writer: Any, hparams: dict[str, Any]) -> None:
    """The HParams plugin's session start for this run (its metrics are the run's own scalars)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    _experiment, session_start, _end = hparams_summaries(hparams, {})
    writer.file_writer.add_summary(session_start)
    writer.flush()


def _continue_mlflow(tracker: Any, params: dict[str, Any], continuing: bool) -> None:
    """Parameters once (MLflow refuses to change one), and each metric's last step when continuing."""
    from mlflow import MlflowClient

    run_id = tracker.active_run.info.run_id
    client = MlflowClient()
    data = client.get_run(run_id).data
    missing = {k: v for k, v in params.items() if k not in data.params}
    if missing:
        tracker.store_init_configuration(missing)
    if continuing:
        tracker.logged_through = {
            key: max(m.step for m in client.get_metric_history(run_id, key)) for key in data.metrics
        }
