"""One rank's share of an epoch plan (plan.py), streamed from tar shards by DataLoader workers.

Each worker reads whole virtual streams and yields, step by step, one `Chunk` per stream: the m
samples that stream contributes to that global batch, decoded, with the stream's position after
it. A stream buffer-shuffles its range with a seeded RNG; an unusable sample (checksum mismatch,
undecodable, wrong size in skip mode) or the unread rest of a broken shard is skipped, counted,
logged and made up from the stream's own range (a second, reshuffled pass if needed), so every
rank gets exactly its quota. Resume: a stream replays its raw sequence (reading, not decoding)
up to its saved position — the same on any layout, since streams do not depend on it.
Errors inside a worker come out as one typed `WorkerFailure` item that the feed raises as a
one-line DataError in the main process (never a worker traceback).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..seeding import text_seed
from .errors import DataError, SampleError, ShardSkip
from .index import ShardInfo
from .masks import make_mask
from .plan import EpochPlan, Layout, worker_streams
from .reader import Sample, iter_samples, verify
from .transforms import decode_image
from .urls import IOOptions

log = logging.getLogger("lfbm_dist.data")
MAX_PASSES = 100  # make-up passes over a stream's range before giving up on it


@dataclass(frozen=True)
class DecodeOptions:
    resolution: int
    channels: int
    hflip: bool = True
    on_mismatch: str = "convert"  # convert | skip | error
    occlusion: str = "none"
    mask_seed: int = 0
    verify: bool = True  # check index checksums before decoding (when the index has them)


@dataclass(frozen=True)
class StreamOptions:
    decode: DecodeOptions
    io: IOOptions = IOOptions()
    shuffle_buffer: int = 1000
    max_corrupt: int = 100  # per stream; one more stops the run


@dataclass
class StreamPosition:
    """Where a stream is: raw items consumed (post-shuffle), samples produced, samples skipped."""

    raw: int = 0
    produced: int = 0
    corrupt: int = 0

    def to_list(self) -> list[int]:
        return [self.raw, self.produced, self.corrupt]

    @classmethod
    def from_list(cls, values: list[int]) -> StreamPosition:
        raw, produced, corrupt = (int(v) for v in values)
        return cls(raw, produced, corrupt)


@dataclass
class Chunk:
    stream: int
    step: int  # step within the epoch
    images: torch.Tensor  # (m, C, R, R) uint8
    keys: list[str]
    position: StreamPosition  # the stream's position after this chunk
    masks: torch.Tensor | None = None  # (m, 1, R, R) uint8, 1 = visible
    skipped: tuple[str, ...] = ()  # "shard URL key K" of the samples skipped since the previous chunk


@dataclass
class WorkerFailure:
    message: str


@dataclass
class _Skipped:
    """The unread rest of a shard, as one raw item."""

    url: str
    reason: str
    count: int
    unreachable: bool = False  # the source kept failing or timing out (not a damaged file)


class ShardStream(IterableDataset):
    """A rank's chunks for one epoch, from step `start_step` on."""

    def __init__(
        self,
        shards: list[ShardInfo],
        plan: EpochPlan,
        rank: int,
        layout: Layout,
        options: StreamOptions,
        start_step: int = 0,
        positions: dict[int, StreamPosition] | None = None,
        quiet: frozenset[str] = frozenset(),
    ):
        super().__init__()
        if any(s.samples is None for s in shards):
            raise DataError("internal: shard sample counts must be known before streaming")
        plan.check()
        self.shards, self.plan, self.rank, self.layout, self.options = shards, plan, rank, layout, options
        self.start_step, self.positions = start_step, positions or {}
        # Samples already reported in an earlier epoch of the run: skipped and counted, not logged again.
        self.quiet, self._skipped_since_chunk = quiet, {}

    def __iter__(self) -> Iterator[Chunk | WorkerFailure]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = range(max(1, self.layout.workers)) if info is None else [worker]
        streams = [v for w in workers for v in worker_streams(self.rank, w, self.layout, self.plan.streams)]
        if info is None:  # no worker processes: read the rank's streams in the order workers would yield them
            streams = sorted(streams, key=lambda v: self._yield_order(v))
        try:
            chunks = {v: self._chunks(v) for v in streams}
            for _ in range(self.start_step, self.plan.steps):
                for v in streams:
                    yield next(chunks[v])
        except DataError as exc:
            if info is None:
                raise  # in the main process already: the caller sees the one-line error itself
            yield WorkerFailure(str(exc))  # from a worker: one typed item, not a worker traceback

    def _yield_order(self, stream: int) -> tuple[int, int]:
        """(index within its worker, worker): DataLoader's round-robin order over the workers."""
        k = max(1, self.layout.workers)
        for w in range(k):
            mine = worker_streams(self.rank, w, self.layout, self.plan.streams)
            if stream in mine:
                return mine.index(stream), w
        raise AssertionError(stream)

    # ------------------------------------------------------------------ one stream
    def _raw(self, stream: int) -> Iterator[tuple[Sample | _Skipped, int, int]]:
        """The stream's raw sequence: (sample or skipped rest of a shard, shard index, pass), buffer-
        shuffled, then again in later passes so that made-up samples exist. A shard given up on because
        its source kept failing or timing out (unreachable, stalled) is not read again in this epoch:
        its later segments are skipped unread (counted in the first pass) and the make-up passes leave
        it out; the next epoch tries it once more. A stalled server costs one bounded wait per epoch."""
        segments = self.plan.segments(stream)
        abandoned: set[int] = set()
        for pass_index in range(MAX_PASSES):
            rng = random.Random(text_seed("buffer", self.plan.seed, self.plan.epoch, stream, pass_index))
            buffer: list[tuple[Sample | _Skipped, int, int]] = []
            for shard, offset, count in segments:
                if shard in abandoned:
                    if pass_index == 0:
                        reason = f"shard {self.shards[shard].url}: given up on earlier in this epoch"
                        buffer.append((_Skipped(self.shards[shard].url, reason, count), shard, pass_index))
                    continue
                for item in self._segment(shard, offset, count):
                    if isinstance(item, _Skipped) and item.unreachable:
                        abandoned.add(shard)  # a damaged file's readable part is still re-read to make up
                    buffer.append((item, shard, pass_index))
                    if len(buffer) >= self.options.shuffle_buffer:
                        yield buffer.pop(rng.randrange(len(buffer)))
            rng.shuffle(buffer)
            yield from buffer
        raise DataError(
            f"stream {stream} of epoch {self.plan.epoch}: no usable samples in {MAX_PASSES} passes over its shards"
        )

    def _segment(self, shard: int, offset: int, count: int) -> Iterator[Sample | _Skipped]:
        url, read = self.shards[shard].url, 0
        try:
            for i, sample in enumerate(iter_samples(url, self.options.io)):
                if i >= offset + count:
                    return
                if i >= offset:
                    read += 1
                    yield sample
            if read < count:  # ended cleanly, but before the index's count
                seen = offset + read
                raise ShardSkip(f"shard {url}: truncated: {seen} samples, the index says {self.shards[shard].samples}")
        except ShardSkip as exc:
            yield _Skipped(url, str(exc), count - read, exc.unreachable)

    def _chunks(self, stream: int) -> Iterator[Chunk]:
        pos = self.positions.get(stream, StreamPosition())
        pos = StreamPosition(pos.raw, pos.produced, pos.corrupt)
        m = self.plan.per_stream
        quota = self.plan.steps * m
        step = pos.produced // m
        images, keys, masks = [], [], []
        raw_seen = 0
        for item, shard, pass_index in self._raw(stream):
            raw_seen += 1
            if raw_seen <= pos.raw:
                continue  # replaying up to the saved position: read, not decoded
            pos.raw = raw_seen
            decoded = self._decode(item, shard, stream, pos, counted=pass_index == 0)
            if decoded is None:
                continue
            images.append(decoded[0])
            keys.append(item.key)  # type: ignore[union-attr]
            if decoded[1] is not None:
                masks.append(decoded[1])
            pos.produced += 1
            if len(images) == m:
                yield Chunk(
                    stream,
                    step,
                    torch.stack(images),
                    keys,
                    StreamPosition(pos.raw, pos.produced, pos.corrupt),
                    torch.stack(masks) if masks else None,
                    tuple(self._skipped_since_chunk.pop(stream, ())),
                )
                images, keys, masks, step = [], [], [], step + 1
            if pos.produced >= quota:
                return

    def _decode(self, item: Sample | _Skipped, shard: int, stream: int, pos: StreamPosition, counted: bool):
        """(image, mask), or None for an unusable sample: counted and logged on the first pass over
        the stream's range only (later passes meet the same bad samples again while making up)."""
        d = self.options.decode
        try:
            if isinstance(item, _Skipped):
                raise SampleError(item.reason)
            checksums = self.shards[shard].checksums
            if d.verify and checksums is not None:
                verify(item, checksums)
            img = decode_image(item.members, d.channels, d.resolution, d.on_mismatch)
        except SampleError as exc:
            skipped_rest = isinstance(item, _Skipped)
            # "shard URL key K", or "shard URL" for the rest of a shard that could not be read
            sample = f"shard {item.url}" if skipped_rest else f"shard {item.url} key {item.key}"
            if not counted or sample in self.quiet:
                return None  # met again (a later pass, a later epoch): skipped, not counted or said twice
            count = item.count if skipped_rest else 1
            pos.corrupt += count
            where = "" if skipped_rest else f"{sample}: "
            if d.on_mismatch == "error" and not skipped_rest:
                raise DataError(f"{where}{exc}") from None
            self._skipped_since_chunk.setdefault(stream, []).append(sample)  # quiet in later epochs
            log.warning(  # the first time this run: said once, with its cause
                "skipped %s%s [%d sample(s); %d/%d on stream %d this epoch]",
                where,
                exc,
                count,
                pos.corrupt,
                self.options.max_corrupt,
                stream,
            )
            if pos.corrupt > self.options.max_corrupt:
                raise DataError(
                    f"more than data.max_corrupt_samples={self.options.max_corrupt} unusable samples "
                    f"on stream {stream}; last: {where}{exc}"
                ) from None
            return None
        if d.hflip and random.Random(text_seed("flip", self.plan.seed, self.plan.epoch, item.key)).random() < 0.5:
            img = img.flip(-1)
        mask = make_mask(d.occlusion, d.resolution, item.key, d.mask_seed) if d.occlusion != "none" else None
        return img, mask
