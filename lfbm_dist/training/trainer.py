"""Algorithm 1 as a small trainer: for each global batch, infer z by posterior Langevin, then one Adam
step on the prior α and the generator β (one optimizer, two parameter groups).

One step is four named phases, in order:
    infer latents  every micro-batch, with the plain module (no collectives, no weight gradients)
    guard          one tiny all-reduce: all ranks agree on finite latents and on a requested stop
    learn          the wrapped module's loss and backward, then the engine's guarded optimizer step
    maintain       logging tick, FID, checkpoint, image grids
Progress is counted in images (kimg), so schedules do not change with world size:
    global_batch == batch_per_gpu × accumulation_steps × world_size   (resolved once, at start)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import state_schema as schema
from ..config import Config
from ..errors import GracefulStop, LfbmError
from ..inference import GRAPHS, batch_coupled
from ..lifetime import WaitInterrupted
from ..seeding import Stream, Tag, per_sample_normal
from . import checkpoint
from .build import BatchLayout, build_model, build_optimizer, count_parameters, kimg_due, lr_scale
from .checkpoint import CheckpointError
from .ema import WeightAverages
from .engine import Engine
from .hooks import NO_HOOKS, Hooks
from .observe import Observer
from .signals import StopRequest
from .snapshots import Snapshots
from .stragglers import Stragglers
from .variants import latent_inference
from .watchdog import Watchdog

log = logging.getLogger("lfbm_dist")
SAMPLE_SEED = 12345  # fixed latents for the prior-sample grids


class NonFiniteError(LfbmError, RuntimeError):
    pass


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Evaluation passes (samples, FID) use BatchNorm running statistics and must not update them."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@dataclass
class TrainerState:
    step: int = 0
    images_seen: int = 0
    skipped_steps: int = 0
    corrupt_samples: int = 0  # unusable samples skipped, whole run, all ranks (as of the last logging tick)
    global_batch: int = 0
    virtual_streams: int = 0
    best: dict = field(default_factory=dict)


@dataclass
class MicroBatch:
    batch: object
    latents: torch.Tensor
    stats: dict


class Trainer:
    def __init__(self, cfg: Config, engine: Engine, batch: BatchLayout, feed, streams: int, hooks: Hooks = NO_HOOKS):
        self.cfg, self.engine, self.feed, self.hooks = cfg, engine, feed, hooks
        self.snapshots = Snapshots(engine, cfg, hooks)  # checkpoints, written in the background
        self.state = TrainerState(global_batch=batch.global_batch, virtual_streams=streams)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_model(cfg)
        optimizer = build_optimizer(cfg, model)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.wrapped, self.optimizer = engine.prepare(model, optimizer)
        self.plain = engine.unwrap(self.wrapped)  # Langevin, sampling, export; `wrapped` only for learning
        self.averages = WeightAverages(self.plain, cfg.ema, batch.global_batch)  # never feeds training
        micro = batch.batch_per_gpu  # the chain batch is resolved from the step's own layout
        chain_batch = engine.fast.chain_batch(
            micro, micro * batch.accumulation_steps, self.plain.generator, cfg.generator.nz, engine.autocast_dtype
        )
        # The image grids' chains run as the training chains do (batch, precision): they meet the
        # training's compiled step, so no rank compiles a second graph at the first image tick.
        self.grid_runner = engine.fast.runner(chain_batch, engine.autocast_dtype)
        self.inference = latent_inference(cfg, self.grid_runner)
        GRAPHS.before_compile = None if hooks is NO_HOOKS else hooks.before_compile
        GRAPHS.before_record = None if hooks is NO_HOOKS else hooks.before_record
        self.total_images = int(round(cfg.train.total_kimg * 1000))
        self.stop = StopRequest()
        self.fixed_x: torch.Tensor | None = None
        self.consecutive_skips = 0
        self.tick_sums: dict[str, torch.Tensor] = {}
        self.tick_count = 0
        self.observer: Observer | None = None
        self.lease_lost: Callable[[], str | None] = lambda: None  # rank 0: the run directory's lock (session)
        # the hang watchdog (session sets the job's; this one never fires) and the per-phase step timers
        self.watch = Watchdog(None, engine.rank, 1, cfg.train.run_dir, floor_s=0, multiple=1, warmup_steps=1,
                              long_s=0, resume="")  # fmt: skip
        self.stragglers = Stragglers(engine.rank, engine.world_size, cfg.train.straggler_share)
        self._chain_started = 0.0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return dict(vars(self.state))

    def load_state_dict(self, saved: dict) -> None:
        known = set(vars(self.state))
        self.state = TrainerState(**{k: v for k, v in saved.items() if k in known})

    def resume(self, ckpt: Path, verified: dict | None = None) -> None:
        saved, positions = checkpoint.load(self.engine, self.plain, ckpt, self.cfg, verified, self.averages)
        saved.setdefault(schema.GLOBAL_BATCH, self.state.global_batch)
        saved.setdefault(schema.VIRTUAL_STREAMS, self.state.virtual_streams)
        self.load_state_dict(saved)
        self.feed.load_state_dicts(positions)
        self.hooks.after_resume(self.engine, self.plain, self.cfg, self.averages)

    def describe(self) -> str:
        p = self.plain
        return (
            f"generator {count_parameters(p.generator):,} + prior {count_parameters(p.prior):,} parameters; "
            f"fast path: {self.engine.fast.describe()}; Langevin chains {self._chain_note()}"
        )

    def _chain_note(self) -> str:
        if not hasattr(self.inference, "chain_batch"):
            return "none (amortised encoder)"
        if batch_coupled(self.plain.generator):
            return "per micro-batch (BatchNorm couples a batch's chains)"
        return f"{self.inference.chain_batch} at a time (learning micro-batch {self.cfg.train.batch_per_gpu})"

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        self.stop.install()
        # the trackers start here, with the stop handler in place (their start can take seconds)
        trackers = self.engine.open_trackers()
        self.observer = Observer(trackers, self.engine.is_main, self.total_images, self.state.images_seen)
        self.watch.start()
        try:
            while self.state.images_seen < self.total_images:
                prev = self.state.images_seen
                self.watch.phase("infer", self.state.step + 1)  # the step in progress, counted as the logs count
                micro_batches = self.infer_latents()
                finite, stop, incomplete = self.guard(micro_batches)
                if incomplete:  # a rank stopped waiting for data: nobody learns; the last finished step is saved
                    self.feed.rewind_step()
                    self.maintain(prev, stop=True)
                    raise GracefulStop(
                        f"stopped by {self.stop.signal or 'a signal on another rank'} while waiting for data, "
                        f"at step {self.state.step} (kimg {self.state.images_seen / 1000:g})",
                        self.stop.exit_code() or 143,
                    )
                self.watch.phase("learn", self.state.step + 1)
                started = time.monotonic()
                self.learn(micro_batches, finite)
                self.hooks.after_step(self.state.step, self.engine.rank)
                self.stragglers.add("learn", time.monotonic() - started, step_done=True)
                self.watch.progress(step_done=True)
                if self.watch.steps_done == self.cfg.train.hang_warmup_steps:  # start-up is over
                    self.engine.collective_timeout(self.cfg.train.step_timeout_min)
                self.maintain(prev, stop)
                if stop:
                    raise GracefulStop(
                        f"stopped by {self.stop.signal or 'a signal on another rank'} at step "
                        f"{self.state.step} (kimg {self.state.images_seen / 1000:g})",
                        self.stop.exit_code() or 143,
                    )
        except BaseException:
            self.snapshots.settle()  # a snapshot in flight still reaches the disk (a stop's was foreground)
            raise
        finally:
            self.watch.stop()
            self.stop.restore()
            self.observer.close()
        return self.state_dict()

    # ------------------------------------------------------------------ phase 1: infer latents
    def infer_latents(self) -> list[MicroBatch] | None:
        """None if a stop request cut this rank's wait for its data short (guard tells every rank)."""
        t, nz = self.cfg.train, self.cfg.generator.nz
        batches, noises = [], []
        for micro in range(t.accumulation_steps):
            waited = time.monotonic()
            try:
                batch = self.feed.micro_batch(self.state.images_seen, self.state.step, micro)
            except WaitInterrupted:
                return None
            self.stragglers.add("data", time.monotonic() - waited)
            batch.x = self.engine.fast.images(batch.x)  # the generator's memory format (channels-last on GPU)
            if self.fixed_x is None:
                self.fixed_x = batch.x[:8].clone()
            noise = per_sample_normal(
                t.seed, self.state.step, batch.positions, self.inference.noise_shape(nz), Stream.LANGEVIN
            ).to(self.engine.device, non_blocking=True)
            batches.append(batch)
            noises.append(noise)
        # All micro-batches' chains at once, chain_batch at a time (variants.LangevinInference).
        self._chain_started = time.monotonic()  # ends at the guard's host sync (CUDA runs the chains until then)
        inferred = self.inference.infer_step(self.plain, batches, noises)
        micro_batches = [MicroBatch(b, latents, stats) for b, (latents, stats) in zip(batches, inferred)]
        self.hooks.after_infer(self.state.step, self.engine.rank, micro_batches)
        return micro_batches

    # ------------------------------------------------------------------ phase 2: guard
    def guard(self, micro_batches: list[MicroBatch] | None) -> tuple[bool, bool, bool]:
        """(latents finite on every rank, some rank asked to stop, some rank has no data for this step):
        one decision for all ranks."""
        # Host–device sync + one tiny all-reduce per step: a step is skipped on every rank or none.
        incomplete = micro_batches is None
        finite = not incomplete and all(bool(torch.isfinite(m.latents).all()) for m in micro_batches)
        if not incomplete:
            self.stragglers.add("langevin", time.monotonic() - self._chain_started)
        self.watch.phase("guard", self.state.step + 1, waiting=True)  # the step's one all-reduce: a wait
        # a background snapshot that could not be written, or the run directory taken over by another job
        lost = self.lease_lost()
        snapshot_error = self.snapshots.failed() or (CheckpointError(lost) if lost else None)
        votes = self.engine.all_reduce_sum(
            torch.tensor(
                [
                    0.0 if finite else 1.0,
                    float(self.stop.requested or incomplete),
                    float(incomplete),
                    float(snapshot_error is not None),
                ],
                dtype=torch.float64,
            )
        )
        if votes[3] > 0:  # every rank stops here together; the previous checkpoint is the newest
            raise self._shared_snapshot_error(snapshot_error)
        return bool(votes[0] == 0), bool(votes[1] > 0), bool(votes[2] > 0)

    def _shared_snapshot_error(self, own: CheckpointError | None) -> CheckpointError:
        """The failing rank's own error, on every rank: each rank's first `error:` line is then the cause
        (disk full, …), whichever rank's output reaches the terminal first. Error path only: collective."""
        found = self.engine.first_failure(str(own) if own is not None else None)
        if own is not None or found is None:
            return own or CheckpointError("a snapshot failed on another rank")
        return CheckpointError(f"{found[1]} (rank {found[0]}'s snapshot)")

    # ------------------------------------------------------------------ phase 3: learn
    def learn(self, micro_batches: list[MicroBatch], finite: bool) -> None:
        scale = lr_scale(self.state.images_seen, self.cfg.optim.lr_decay, self.cfg.optim.lr_decay_every_kimg)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale
        applied = False
        if finite:
            for m in micro_batches:
                prior_noise = self._prior_noise(m.batch.positions)
                with self.engine.accumulate(self.wrapped):
                    loss, stats = self.wrapped(
                        m.batch.x,
                        m.latents,
                        mask=m.batch.mask,
                        autocast_dtype=self.engine.autocast_dtype,
                        prior_noise=prior_noise,
                    )
                    self.engine.backward(self.hooks.loss(loss, self.state.step))  # ÷ accumulation_steps inside
                stats.update(m.stats)
                for key, value in stats.items():
                    self.tick_sums[key] = self.tick_sums.get(key, 0.0) + value.detach().float()
                self.tick_count += 1
            applied, grad_norm = self.engine.guarded_step(self.plain)
            if grad_norm is not None and applied:
                self.tick_sums["grad_norm"] = self.tick_sums.get("grad_norm", 0.0) + grad_norm.float() * len(
                    micro_batches
                )
        self._count_skip(applied)
        self.state.step += 1
        self.state.images_seen += self.state.global_batch
        self.averages.update(self.plain, self.state.images_seen, self.state.step)  # reads the weights only
        if self.observer is not None:
            self.observer.advance(self.state.global_batch)

    def _prior_noise(self, positions: list[int]) -> torch.Tensor | None:
        """The prior's own randomness in the learning step (the EBM prior's negative chains)."""
        shape = self.plain.prior.loss_noise_shape
        if shape is None:
            return None
        return per_sample_normal(self.cfg.train.seed, self.state.step, positions, tuple(shape), Stream.PRIOR_CHAIN).to(
            self.engine.device, non_blocking=True
        )

    def _count_skip(self, applied: bool) -> None:
        if applied:
            self.consecutive_skips = 0
            return
        self.state.skipped_steps += 1
        self.consecutive_skips += 1
        if self.engine.is_main:
            log.warning(
                "non-finite latents or gradients at step %d: step skipped (%d in a row)",
                self.state.step,
                self.consecutive_skips,
            )
        if self.consecutive_skips >= self.cfg.train.max_consecutive_skips:
            raise NonFiniteError(
                f"{self.consecutive_skips} consecutive non-finite steps at step {self.state.step}; "
                "stopping (lower the learning rates or the Langevin step size)"
            )

    # ------------------------------------------------------------------ phase 4: maintain
    def maintain(self, prev: int, stop: bool) -> None:
        t, now = self.cfg.train, self.state.images_seen
        done = now >= self.total_images
        if kimg_due(prev, now, t.log_every_kimg) or done or stop:
            self.watch.phase("logging tick", self.state.step, waiting=True)  # its reductions are waits
            self._log_tick(now)
        if kimg_due(prev, now, self.cfg.eval.fid_every_kimg) and not done:
            with self._long_phase("evaluation"):
                self._fid(now)
        if kimg_due(prev, now, t.snapshot_every_kimg) or done or stop:  # in the background unless the last
            with self._long_phase("final snapshot") if done or stop else contextlib.nullcontext():
                self.snapshots.save(self.plain, self.state_dict(), self.feed.state_dict(), done or stop, self.averages)
            self.watch.progress()
        if self._posthoc_due(prev, now, done or stop) and self.engine.is_main:
            self.averages.write_posthoc(t.run_dir, now, self.state.step)
        if done or stop:  # optional work only after the final checkpoint is safe
            with self._long_phase("image grids"):
                self._images(now)
            if done and kimg_due(prev, now, self.cfg.eval.fid_every_kimg):
                with self._long_phase("evaluation"):
                    self._fid(now)
        elif kimg_due(prev, now, t.image_every_kimg):
            with self._long_phase("image grids"):
                self._images(now)

    def _posthoc_due(self, prev: int, now: int, last: bool) -> bool:
        """Post-hoc EMA snapshots: with every checkpoint (ema.posthoc_every_kimg = 0) or at their own pace."""
        every = self.cfg.ema.posthoc_every_kimg or self.cfg.train.snapshot_every_kimg
        return bool(self.averages.gammas) and (last or kimg_due(prev, now, every))

    @contextlib.contextmanager
    def _long_phase(self, name: str):
        """Work that is not a step: judged by the watchdog's long bound, under the long collective
        timeout (train.collective_timeout_min); progress when it ends."""
        t = self.cfg.train
        self.watch.phase(name, self.state.step, long=True)
        self.engine.collective_timeout(t.collective_timeout_min)
        try:
            yield
        finally:
            self.watch.progress()
            if self.watch.steps_done >= t.hang_warmup_steps:
                self.engine.collective_timeout(t.step_timeout_min)

    def _log_tick(self, now: int) -> None:
        keys = sorted(self.tick_sums)
        values: dict[str, float] = {}
        if keys:  # empty only if every step of the tick was skipped
            means = self.engine.reduce_mean(torch.stack([self.tick_sums[k] / self.tick_count for k in keys]))
            values = dict(zip(keys, means.tolist()))  # host sync: once per logging tick
            if self.plain.prior.normalized and "log_p_z" in values:
                values["aggpost/gap_nats"] = values["log_p_z"] - values["log_p_z_standard_normal"]
        values["images_per_sec"] = self.observer.images_per_sec(now)  # all ranks together (images_seen is global)
        for group in self.optimizer.param_groups:
            values[f"lr/{group.get('name', 'group')}"] = group["lr"]
        values["skipped_steps"] = float(self.state.skipped_steps)
        values.update(self.stragglers.tick(self.engine.all_gather_cat, now / 1000))  # collective: every rank
        corrupt = self.engine.all_reduce_sum(torch.tensor([float(self.feed.corrupt_skipped)], dtype=torch.float64))
        values["data/corrupt_skipped"] = float(corrupt[0])  # cumulative over the run's epochs
        self.state.corrupt_samples = int(corrupt[0])
        self.observer.scalars(values, now)
        self.observer.status(self.state.step, now, values)
        self.tick_sums, self.tick_count = {}, 0

    def _fid(self, now: int) -> None:
        from .evaluation import run_metrics  # collective: every rank generates its share of samples

        with eval_mode(self.plain), self.averages.applied(self.plain):  # the EMA's samples (every rank: its own)
            fid = run_metrics(self.plain, self.cfg, ["fid"], self.engine.device, self.engine)["fid"]
        best = self.state.best
        if best.get("fid") is None or fid < best["fid"]:
            best["fid"], best["fid_kimg"] = fid, now / 1000
        self.observer.scalars({"eval/fid": fid, "eval/fid_best": best["fid"]}, now)
        log.info("FID %.3f at kimg %.3f (best %.3f)", fid, now / 1000, best["fid"])

    def _images(self, now: int) -> None:
        """Prior samples and reconstructions of a fixed batch (index-seeded chains: comparable over time),
        with the EMA's weights (the raw ones back after)."""
        if not self.engine.is_main or self.fixed_x is None:
            return
        self.hooks.before_images()
        from ..metrics.sampling import infer, sample_images

        lv = self.cfg.langevin
        with eval_mode(self.plain), self.averages.applied(self.plain):
            self.observer.image_grid(
                "samples/prior", sample_images(self.plain, list(range(32)), SAMPLE_SEED, self.engine.device), now
            )
            z = infer(
                self.plain,
                self.fixed_x,
                list(range(len(self.fixed_x))),
                SAMPLE_SEED,
                lv.num_steps,
                lv.step_size,
                tag=Tag.TB_RECON,
                chain=self.grid_runner,
            )
            with torch.no_grad():
                recon = self.plain.generator(z)
        self.observer.image_grid("reconstructions", torch.cat([self.fixed_x, recon]), now)
