"""Training-batch feeds: which images each rank trains on at each step.

A feed returns, for (step, micro-step), this rank's micro-batch as float [−1, 1] on the device,
plus the *global sample indices* of its rows: the keys of all per-sample randomness (flips,
Langevin chains), so a global batch trains identically on any number of ranks. Both feeds take
plain values (no Config): training/build.py makes them from one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from .. import private_apis
from .. import state_schema as schema
from ..lifetime import interruptible_wait
from ..seeding import Stream, per_sample_uniform
from .errors import DataError
from .index import ShardInfo
from .masks import make_mask
from .memory import MemorySampler, to_model_range
from .plan import EpochPlan, Layout, check_layout, rank_streams
from .stream import Chunk, ShardStream, StreamOptions, StreamPosition, WorkerFailure

DATA_STATE_VERSION = 2


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which finishes its step,
    checkpoints and then shuts them down (a worker that died with the signal would break that step);
    a worker whose rank dies exits with it (lifetime.die_with_parent), wherever it is blocked."""
    import signal

    from ..lifetime import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()


def micro_batch_positions(images_seen: int, micro: int, rank: int, world_size: int, batch_per_gpu: int) -> list[int]:
    """Global sample indices of (micro-step, rank) inside the global batch that starts at images_seen."""
    start = images_seen + (micro * world_size + rank) * batch_per_gpu
    return list(range(start, start + batch_per_gpu))


@dataclass
class Batch:
    x: torch.Tensor  # (B, C, R, R) float in [−1, 1], on the device
    positions: list[int]  # global sample indices: keys of per-sample randomness
    mask: torch.Tensor | None = None  # (B, 1, R, R) float, 1 = visible (learning from occluded data)
    keys: list[str] | None = None  # dataset sample keys


class MemoryFeed:
    """A packaged set held in memory; sample i of the run is a pure function of (seed, i)."""

    def __init__(
        self,
        images: torch.Tensor,
        rows: list[int],
        *,
        seed: int,
        rank: int,
        layout: Layout,
        batch_per_gpu: int,
        device: torch.device,
        hflip: bool,
        occlusion: str = "none",
        mask_seed: int = 0,
    ):
        self.images, self.rows = images, rows
        self.sampler = MemorySampler(len(rows), seed)
        self.rank, self.world_size, self.device = rank, layout.world_size, device
        self.batch_per_gpu, self.seed, self.hflip = batch_per_gpu, seed, hflip
        self.occlusion, self.mask_seed = occlusion, mask_seed

    def __len__(self) -> int:
        return len(self.rows)

    corrupt_skipped = 0

    def describe(self) -> str:
        return f"{len(self)} images in memory"

    def state_dict(self) -> dict:
        return {}  # the position is a pure function of images_seen

    def load_state_dicts(self, states: list[dict]) -> None:
        pass

    def rewind_step(self) -> None:
        pass  # the position is a pure function of images_seen

    def close(self) -> None:
        pass

    def micro_batch(self, images_seen: int, step: int, micro: int) -> Batch:
        positions = micro_batch_positions(images_seen, micro, self.rank, self.world_size, self.batch_per_gpu)
        rows = torch.tensor([self.rows[self.sampler.index(p)] for p in positions])
        x = to_model_range(self.images[rows])  # (B, C, R, R) in [−1, 1]
        if self.hflip:
            flip = per_sample_uniform(self.seed, step, positions, Stream.FLIP) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        mask = None
        if self.occlusion != "none":  # keyed by dataset row: the same image always has the same mask
            resolution = x.shape[-1]
            mask = (
                torch.stack([make_mask(self.occlusion, resolution, str(int(r)), self.mask_seed) for r in rows])
                .float()
                .to(self.device)
            )
        return Batch(x.to(self.device, non_blocking=True), positions, mask, [str(int(r)) for r in rows])


class ShardFeed:
    """WebDataset shards through the world-size-independent epoch plan (plan.py)."""

    def __init__(
        self,
        shards: list[ShardInfo],
        options: StreamOptions,
        *,
        seed: int,
        global_batch: int,
        streams: int,
        rank: int,
        layout: Layout,
        device: torch.device,
        batch_timeout_s: float = 600.0,
    ):
        check_layout(streams, global_batch, layout)
        self.shards, self.options, self.seed = shards, options, seed
        self.global_batch, self.streams, self.rank, self.layout = global_batch, streams, rank, layout
        self.device, self.batch_timeout_s = device, batch_timeout_s
        self.micro_streams = rank_streams(rank, layout, streams)  # streams of each of this rank's micro-batches
        self.epoch, self.step_in_epoch = 0, 0
        self.positions: dict[int, StreamPosition] = {}
        self.corrupt_earlier_epochs = 0  # unusable samples counted in the run's finished epochs (this rank)
        self.reported: set[str] = set()  # "shard URL key K" already logged once in this run
        self._before_step: tuple | None = None
        self._iter = None
        self._chunks: dict[int, Chunk] = {}

    def __len__(self) -> int:
        return sum(int(s.samples or 0) for s in self.shards)

    def describe(self) -> str:
        note = (
            ""
            if all(s.checksums for s in self.shards) or not self.options.decode.verify
            else "; no per-sample checksums in the index: samples cannot be verified"
        )
        return f"{len(self)} images in {len(self.shards)} shards, {self.streams} virtual streams{note}"

    @property
    def corrupt_skipped(self) -> int:
        """Unusable samples skipped on this rank's streams, whole run (cumulative over epochs)."""
        return self.corrupt_earlier_epochs + sum(p.corrupt for p in self.positions.values())

    def _plan(self) -> EpochPlan:
        return EpochPlan(
            tuple(int(s.samples) for s in self.shards), self.global_batch, self.streams, self.seed, self.epoch
        )

    # -- position ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": DATA_STATE_VERSION,
            schema.DATA_EPOCH: self.epoch,
            schema.DATA_STEP: self.step_in_epoch,
            schema.DATA_STREAMS: self.streams,
            schema.DATA_GLOBAL_BATCH: self.global_batch,
            schema.DATA_POSITIONS: {str(v): self.positions[v].to_list() for v in sorted(self.positions)},
            "corrupt_earlier_epochs": self.corrupt_earlier_epochs,
            "reported": sorted(self.reported),
        }

    def load_state_dicts(self, states: list[dict]) -> None:
        """Every rank's saved position (any earlier layout): this rank takes its streams' entries."""
        states = [s for s in states if s]
        if not states:
            return
        if any(s.get("version") != DATA_STATE_VERSION for s in states):
            raise DataError(
                "checkpoint data position is from an older lfbm_dist; resume it with that version, or "
                "export and start from the export"
            )
        first = states[0]
        plan = (schema.DATA_EPOCH, schema.DATA_STEP, schema.DATA_STREAMS, schema.DATA_GLOBAL_BATCH)
        for s in states:
            if tuple(s[k] for k in plan) != tuple(first[k] for k in plan):
                raise DataError("checkpoint data positions of the ranks disagree (epoch/step/streams)")
        streams, global_batch = first[schema.DATA_STREAMS], first[schema.DATA_GLOBAL_BATCH]
        if (streams, global_batch) != (self.streams, self.global_batch):
            raise DataError(
                f"checkpoint data plan has {streams} streams and global batch "
                f"{global_batch}, this run {self.streams} and {self.global_batch}"
            )
        positions = [(v, p) for s in states for v, p in s[schema.DATA_POSITIONS].items()]
        saved = {int(v): StreamPosition.from_list(p) for v, p in positions}
        self.epoch, self.step_in_epoch = int(first[schema.DATA_EPOCH]), int(first[schema.DATA_STEP])
        mine = {v for micro in self.micro_streams for v in micro}
        missing = mine - set(saved)
        if missing and self.step_in_epoch:
            raise DataError(f"checkpoint has no position for virtual stream(s) {sorted(missing)[:5]}")
        self.positions = {v: saved[v] for v in mine if v in saved}
        # Run-wide tallies: rank 0 carries the earlier epochs' count (the logged total is a sum over ranks).
        self.corrupt_earlier_epochs = (
            sum(int(s.get("corrupt_earlier_epochs", 0)) for s in states) if self.rank == 0 else 0
        )
        self.reported = {key for s in states for key in s.get("reported", [])}
        self._iter = None

    # -- batches -------------------------------------------------------------------------------
    def _start_epoch(self) -> None:
        plan = self._plan()
        stream = ShardStream(
            self.shards,
            plan,
            self.rank,
            self.layout,
            self.options,
            self.step_in_epoch,
            dict(self.positions),
            quiet=frozenset(self.reported),
        )
        workers = self.layout.workers
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            timeout=self.batch_timeout_s if workers else 0,
            worker_init_fn=_ignore_stop_signals,
        )
        self._iter = iter(loader)

    def _next_chunk(self) -> Chunk:
        try:
            with interruptible_wait():  # a stop request may cut this wait short (lifetime.py)
                item = next(self._iter)
        except DataError:
            raise
        except RuntimeError as exc:  # DataLoader's own timeout: a worker produced nothing for too long
            if str(exc).startswith("DataLoader timed out"):
                raise DataError(
                    f"no data for {self.batch_timeout_s:.0f} s from the DataLoader workers "
                    "(data.read_timeout_s and data.retries bound each read)"
                ) from None
            raise
        if isinstance(item, WorkerFailure):
            raise DataError(item.message)
        return item

    def close(self) -> None:
        """End the DataLoader workers now, even one blocked in a stalled read. DataLoader's own shutdown
        runs first (workers that are free exit cleanly; none is killed while it may hold a queue lock);
        a worker still alive after it is blocked in a read and, since ours ignore SIGTERM (the launcher
        forwards a stop to the whole process group, and the step must finish first), gets SIGKILL —
        else multiprocessing's join at exit would wait on it for ever."""
        it, self._iter = self._iter, None
        if it is not None:
            private_apis.stop_dataloader_workers(it)

    def rewind_step(self) -> None:
        """Back to before the last fetched step (a step that no rank learned from: its data is not used)."""
        if self._before_step is not None:
            self.epoch, self.step_in_epoch, positions, self.corrupt_earlier_epochs, reported = self._before_step
            self.positions, self.reported = dict(positions), set(reported)
            self._before_step = None
            self.close()  # its workers were ahead of the rewound position

    def _fetch_step(self) -> None:
        """This rank's chunks of the next global batch (one per stream it owns)."""
        self._before_step = (
            self.epoch,
            self.step_in_epoch,
            dict(self.positions),
            self.corrupt_earlier_epochs,
            set(self.reported),
        )
        if self._iter is None:
            self._start_epoch()
        if self.step_in_epoch >= self._plan().steps:
            self.corrupt_earlier_epochs += sum(p.corrupt for p in self.positions.values())
            self.epoch, self.step_in_epoch, self.positions = self.epoch + 1, 0, {}
            self._start_epoch()
        wanted = sum(len(m) for m in self.micro_streams)
        self._chunks = {}
        for _ in range(wanted):
            chunk = self._next_chunk()
            if chunk.step != self.step_in_epoch:
                raise DataError(
                    f"internal: stream {chunk.stream} is at step {chunk.step}, the feed at {self.step_in_epoch}"
                )
            self._chunks[chunk.stream] = chunk
        for v, chunk in self._chunks.items():
            self.positions[v] = chunk.position
            self.reported.update(chunk.skipped)
        self.step_in_epoch += 1

    def micro_batch(self, images_seen: int, step: int, micro: int) -> Batch:
        if micro == 0:
            self._fetch_step()
        chunks = [self._chunks[v] for v in self.micro_streams[micro]]
        images = torch.cat([c.images for c in chunks])
        x = images.to(self.device, non_blocking=True).float() / 127.5 - 1.0  # (B, C, R, R) in [−1, 1]
        mask = None
        if chunks[0].masks is not None:
            mask = torch.cat([c.masks for c in chunks]).to(self.device, non_blocking=True).float()
        batch = images.shape[0]
        positions = micro_batch_positions(images_seen, micro, self.rank, self.layout.world_size, batch)
        return Batch(x, positions, mask, [k for c in chunks for k in c.keys])
