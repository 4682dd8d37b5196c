"""The epoch plan: which sample goes into which global batch, independent of the number of ranks.

Each epoch e of N samples in global batches of G:
  1. shard order = a permutation seeded by (seed, e); the epoch's sample stream is the shards
     concatenated in that order;
  2. the first S·G samples (S = N // G steps) are cut into V contiguous ranges, one per *virtual
     stream*; stream v buffer-shuffles its range (seeded by seed, e, v) into a fixed sequence;
  3. global batch t holds m = G / V consecutive samples of every stream, stream-major: position
     p = v·m + j is sample t·m + j of stream v.
Nothing here depends on the world size W, the accumulation steps A or the DataLoader workers K.
Those only decide who reads what: rank r's micro-batch a covers positions [(a·W + r)·B, …+B)
(B = G / (W·A)), i.e. V / (W·A) whole streams, and the rank's K workers split its V / W streams.
So a run can stop on one layout and continue on another with the very same global batches — as
long as V is divisible by W·A and V / W by K (`check_layout` says which layouts work). Fewer than
G samples per epoch are left out (different ones each epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..seeding import text_seed
from .errors import DataError


@dataclass(frozen=True)
class Layout:
    """How one run is split: world size, accumulation steps, DataLoader workers per rank (0 = none)."""

    world_size: int
    accumulation_steps: int
    workers: int

    def describe(self) -> str:
        return f"{self.world_size} rank(s) × {self.accumulation_steps} accumulation × {self.workers} worker(s)"


def layout_problem(streams: int, global_batch: int, layout: Layout) -> str | None:
    """Why `layout` cannot serve this plan, or None if it can."""
    w, a, k = layout.world_size, layout.accumulation_steps, max(1, layout.workers)
    if global_batch % streams:
        return f"the global batch {global_batch} is not divisible by {streams} virtual streams"
    if streams % (w * a):
        return f"{streams} virtual streams cannot be split evenly over {w} rank(s) × {a} micro-batch(es)"
    if (streams // w) % k:
        return f"the {streams // w} streams of each rank cannot be split evenly over {k} worker(s)"
    return None


def working_layouts(streams: int, global_batch: int, accumulation_steps: int, max_world: int = 64) -> list[str]:
    """World sizes × worker counts that serve this plan (for error messages)."""
    out = []
    for w in range(1, min(streams, max_world) + 1):
        workers = [
            k
            for k in range(1, streams // w + 1)
            if layout_problem(streams, global_batch, Layout(w, accumulation_steps, k)) is None
        ]
        if workers:
            out.append(f"{w}×{{{','.join(str(k) for k in workers)}}}")
    return out


def check_layout(streams: int, global_batch: int, layout: Layout) -> None:
    problem = layout_problem(streams, global_batch, layout)
    if problem:
        ok = working_layouts(streams, global_batch, layout.accumulation_steps)
        raise DataError(
            f"data plan: {problem}; with {streams} virtual streams, accumulation "
            f"{layout.accumulation_steps} and global batch {global_batch}, ranks×{{workers}} that work: "
            f"{' '.join(ok) or 'none'} (data.virtual_streams sets the stream count of a new run)"
        )


@dataclass(frozen=True)
class EpochPlan:
    counts: tuple[int, ...]  # samples per shard, in shard-list order
    global_batch: int
    streams: int
    seed: int
    epoch: int

    @property
    def steps(self) -> int:
        """Global batches in this epoch."""
        return sum(self.counts) // self.global_batch

    @property
    def per_stream(self) -> int:
        """Samples each stream contributes to one global batch (m)."""
        return self.global_batch // self.streams

    def shard_order(self) -> list[int]:
        order = list(range(len(self.counts)))
        random.Random(text_seed("shards", self.seed, self.epoch)).shuffle(order)
        return order

    def segments(self, stream: int) -> list[tuple[int, int, int]]:
        """Stream `stream`'s range of the epoch as (shard, offset, count) pieces, in read order."""
        length = self.steps * self.per_stream
        start, pieces, pos = stream * length, [], 0
        for shard in self.shard_order():
            n = self.counts[shard]
            lo, hi = max(start, pos), min(start + length, pos + n)
            if lo < hi:
                pieces.append((shard, lo - pos, hi - lo))
            pos += n
        return pieces

    def check(self) -> None:
        if self.steps == 0:
            raise DataError(
                f"{sum(self.counts)} samples cannot fill one global batch of {self.global_batch}; "
                "use a smaller batch or more data"
            )


def rank_streams(rank: int, layout: Layout, streams: int) -> list[list[int]]:
    """The streams of each of this rank's micro-batches, in micro-batch order (positions follow)."""
    w, a = layout.world_size, layout.accumulation_steps
    per_micro = streams // (w * a)
    return [list(range((m * w + rank) * per_micro, (m * w + rank + 1) * per_micro)) for m in range(a)]


def worker_streams(rank: int, worker: int, layout: Layout, streams: int) -> list[int]:
    """The streams one DataLoader worker of this rank reads (round-robin over the rank's streams)."""
    mine = [v for micro in rank_streams(rank, layout, streams) for v in micro]
    return mine[worker :: max(1, layout.workers)]
