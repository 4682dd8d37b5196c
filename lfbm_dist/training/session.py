"""One training run from a config: resolve the batch layout for this world size, apply the run-directory
rules, build engine, data and trainer, resume, train, and report. Entry point: lfbm_dist/train.py."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import yaml

from .. import logs
from .. import state_schema as schema
from ..config import Config, ConfigError
from ..data.plan import Layout
from ..errors import GracefulStop
from ..files import write_atomic
from ..inference import GRAPHS
from . import checkpoint, faults, rundir
from .build import (
    batch_statistics_warning,
    build_feed,
    check_fits,
    default_streams,
    launched_world_size,
    resolve_batch_layout,
)
from .compile_cache import use_compile_cache
from .engine import Engine, TrackerSpec, job_store, launcher_command, start_job
from .engine.trackers import check_installed, flatten
from .runlock import RunDirLocked, RunLock
from .trainer import Trainer
from .watchdog import Watchdog

log = logging.getLogger("lfbm_dist")


def _saved(ckpt: Path | None) -> dict:
    return checkpoint.read_json(ckpt / schema.TRAINER_STATE, "trainer state") if ckpt else {}


def resume_command(argv: list[str], parent: list[str] | None = None) -> str:
    """The command that continues this run: the same launcher and arguments, with train.resume=auto
    (parent: the launcher's command line, None: read from the parent process)."""
    args = [a for a in launcher_command(argv, parent) if not a.startswith(("train.resume=", "train.overwrite="))]
    return shlex.join([*args, "train.resume=auto"])


def train(cfg: Config, argv: list[str] | None = None) -> dict:
    """Train per cfg; returns the final trainer state (GracefulStop after a signal's checkpoint)."""
    check_installed(cfg.train.log_with)  # before anything is made: one line naming the pip command
    # weights, gradients, Adam's two moments and the averages, in float32: one line if they cannot fit
    check_fits(cfg, copies=4 + (cfg.ema.halflife_kimg > 0) + len(cfg.ema.posthoc_std))
    lock = hold_run_dir(cfg)  # one job per run directory: before anything in it is read or written
    try:
        return _train(cfg, argv, lock)
    finally:
        if lock is not None:
            lock.release()


def hold_run_dir(cfg: Config) -> RunLock | None:
    """Rank 0 takes the run directory's lease (runlock.py); every rank learns the verdict over the job's
    key-value store, so a refused job stops on all ranks with rank 0's one line. None on other ranks."""
    launched, key = start_job(cfg), "lfbm/runlock"
    if launched and int(os.environ.get("RANK", "0")) != 0:
        verdict = job_store().get(key).decode()  # waits for rank 0 (which may watch a lease ≤ a minute)
        if verdict:
            raise RunDirLocked(verdict)
        return None
    lock = RunLock(cfg.train.run_dir)
    try:
        lock.acquire()
    except BaseException as exc:
        if launched:
            job_store().set(key, str(exc) if isinstance(exc, RunDirLocked) else f"rank 0 failed: {exc}"[:500])
        raise
    if launched:
        job_store().set(key, "")
    return lock


def _train(cfg: Config, argv: list[str] | None, lock: RunLock | None) -> dict:
    t = cfg.train
    state = rundir.inspect(cfg)  # one-line CheckpointError if a new run would mix with an old one
    if state.kind == "complete":
        log.info(
            "lfbm_dist: %s is %s; nothing to train (raise train.total_kimg to continue it)", t.run_dir, state.describe()
        )
        return _saved(state.checkpoint)
    saved = _saved(state.checkpoint)
    world = launched_world_size()
    batch = resolve_batch_layout(cfg, world, saved.get(schema.GLOBAL_BATCH))
    cfg = cfg.model_copy(
        update={
            "train": t.model_copy(
                update={
                    "batch_per_gpu": batch.batch_per_gpu,
                    "accumulation_steps": batch.accumulation_steps,
                    "global_batch": batch.global_batch,
                }
            )
        }
    )
    engine = Engine(cfg, tracker_spec(cfg, state, argv or sys.argv))
    moved = None
    if engine.is_main:
        if t.overwrite and state.kind == "new" and not rundir.elastic_restart():  # a restart keeps its own
            moved = rundir.move_aside(Path(t.run_dir))
        Path(t.run_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(t.run_dir) / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    engine.barrier()
    check_shared_run_dir(engine, Path(t.run_dir))
    logs.setup(engine.rank, engine.world_size, t.run_dir)
    if moved:
        log.info("lfbm_dist: the earlier run's artefacts were moved to %s", moved)
    cache = use_compile_cache(cfg.perf.compile_cache, t.run_dir) if engine.fast.compile_mode else None
    layout = Layout(engine.world_size, batch.accumulation_steps, cfg.data.num_workers)
    streams = saved.get(schema.VIRTUAL_STREAMS) or default_streams(cfg, layout)
    feed = build_feed(cfg, engine.rank, layout, batch, engine.device, streams)
    # The test suite's fault injection (training/faults.py): the no-op hooks unless its variables are set.
    trainer = Trainer(cfg, engine, batch, feed, streams, faults.from_env())
    trainer.lease_lost = (lambda: lock.lost) if lock is not None else trainer.lease_lost
    trainer.watch = watchdog(cfg, engine, argv)
    if state.checkpoint is not None:
        trainer.resume(state.checkpoint, state.manifest)
    _start_line(cfg, engine, batch, trainer, feed, state, layout, cache)
    started = time.time()
    try:
        result = trainer.run()
    except GracefulStop as stop:
        newest = checkpoint.latest(t.run_dir)
        raise GracefulStop(
            f"{stop}: checkpoint {newest}; resume with: {resume_command(argv or sys.argv)}", stop.code
        ) from None
    finally:
        feed.close()  # DataLoader workers ignore SIGTERM (so a stop's step can finish): end them here
    _summary(cfg, engine, result, time.time() - started, trainer.stragglers.describe())
    engine.end()
    return result


def watchdog(cfg: Config, engine: Engine, argv: list[str] | None) -> Watchdog:
    """This rank's hang watchdog (training/watchdog.py), over the job's key-value store."""
    t = cfg.train
    return Watchdog(
        job_store(), engine.rank, engine.world_size, t.run_dir, floor_s=t.hang_floor_s,
        multiple=t.hang_step_multiple, warmup_steps=t.hang_warmup_steps, long_s=60 * t.collective_timeout_min,
        resume=resume_command(argv or sys.argv), dump_collectives=engine.dump_collectives,
    )  # fmt: skip


# Settings that say where and how a run is kept, not what it learns: never an HParams column.
_NOT_HPARAMS = {
    *(f"train.{k}" for k in ("run_dir", "resume", "overwrite", "log_with", "collective_timeout_min", "keep_snapshots")),
    *(f"train.{k}" for k in ("log_every_kimg", "snapshot_every_kimg", "image_every_kimg", "snapshot_async")),
    *(f"train.{k}" for k in ("step_timeout_min", "hang_floor_s", "hang_step_multiple", "hang_warmup_steps")),
    "train.straggler_share",
    *("train.snapshot_shard_mb", "data.num_workers", "eval.cache_dir"),
}


def hparams(cfg: Config, argv: list[str]) -> dict:
    """What a sweep varies: the settings given on the command line (a Slurm array's and lfbm-repro's
    points are their overrides), with their resolved values, and the preset they start from."""
    flat = flatten(cfg.to_dict())
    given = [a.split("=", 1)[0] for a in argv if "=" in a and not a.startswith("-")]
    chosen = {k: flat[k] for k in given if k in flat and k not in _NOT_HPARAMS}
    preset = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else ""
    return {"config": preset, **chosen}


def tracker_spec(cfg: Config, state, argv: list[str]) -> TrackerSpec:
    resumed = state.checkpoint is not None
    return TrackerSpec(
        names=tuple(cfg.train.log_with),
        run_dir=Path(cfg.train.run_dir),
        step=state.images_seen if resumed else 0,
        purge=resumed,
        continuing=resumed,
        params=flatten(cfg.to_dict()),
        hparams=hparams(cfg, argv),
    )


def check_shared_run_dir(engine: Engine, run_dir: Path) -> None:
    """Every rank must see the one run directory (snapshots are written by all, committed by rank 0):
    rank 0 writes a token there, every rank looks for it, one line if some rank does not see it."""
    if engine.world_size == 1:
        return
    token = engine.broadcast_object(f".shared-check-{os.getpid()}-{time.time_ns()}" if engine.is_main else None)
    if engine.is_main:
        write_atomic(run_dir / token, "")
    engine.barrier()
    unseen = torch.zeros(engine.world_size, dtype=torch.float64)
    unseen[engine.rank] = float(not (run_dir / token).exists())
    unseen = engine.all_reduce_sum(unseen)
    engine.barrier()
    if engine.is_main:
        (run_dir / token).unlink(missing_ok=True)
    if unseen.sum() > 0:
        ranks = ", ".join(str(r) for r in torch.nonzero(unseen).flatten().tolist()[:8])
        raise ConfigError(
            f"train.run_dir {run_dir} is not shared: rank(s) {ranks} do not see what rank 0 wrote there; "
            "put it on a file system every node mounts at the same path"
        )


def _start_line(
    cfg: Config, engine: Engine, batch, trainer: Trainer, feed, state, layout: Layout, cache: str | None
) -> None:
    if not engine.is_main:
        return
    d, t = cfg.data, cfg.train
    data = f"{', '.join(d.shards)}" if d.source == "shards" else f"packaged '{d.dataset}'"
    log.info(
        "lfbm_dist: %d rank(s) on %s (%s), global batch %d = %d × %d accumulation × %d rank(s), precision %s",
        engine.world_size,
        engine.device,
        engine.backend_name,
        batch.global_batch,
        batch.batch_per_gpu,
        batch.accumulation_steps,
        engine.world_size,
        t.precision,
    )
    log.info("  data: %s (%s); run dir %s: %s", data, feed.describe(), t.run_dir, state.describe())
    log.info("  %s", trainer.describe())
    if cache:
        log.info("  %s", cache)
    for note in (batch.note, batch_statistics_warning(cfg, layout.world_size, layout.accumulation_steps)):
        if note:
            log.warning("note: %s", note)


def _summary(cfg: Config, engine: Engine, result: dict, wall_s: float, skew: str | None) -> None:
    if not engine.is_main:
        return
    run_dir = Path(cfg.train.run_dir)
    log.info(
        "done: %d steps, kimg %g, %d skipped, %d unusable samples skipped, %.0f s; newest checkpoint %s",
        result[schema.STEPS_DONE],
        result[schema.IMAGES_SEEN] / 1000,
        result[schema.SKIPPED_STEPS],
        result.get(schema.CORRUPT_SAMPLES, 0),
        wall_s,
        checkpoint.latest(run_dir),
    )
    log.info("  %s", GRAPHS.summary())
    if skew:
        log.info("  %s", skew)
    for line in engine.trackers.describe():
        log.info("  %s", line)
    log.info("  evaluate:    lfbm-evaluate --run %s --metrics fid,recon", run_dir)
