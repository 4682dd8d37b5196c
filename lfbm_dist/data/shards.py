"""Streaming WebDataset tar shards to many ranks, resumably.

Shards are named by brace patterns ("data/train-{000000..000099}.tar"), index files written by
data_tools (".../index.json", optionally "index.json#test" for another split) or lists, at any fsspec
URL (local paths, file://, http(s)://, s3://, gs:// with the backend installed). `pipe:` URLs run
shell commands and are refused unless `data.allow_pipe: true`.

Epoch plan (the heart of it). Each epoch e:
  1. shard order = a permutation seeded by (seed, e); the epoch stream is the shards concatenated;
  2. with G = world_size × workers global workers and B = batch_per_gpu, every worker gets
     q = N // (G·B) batches: worker g reads stream positions [g·q·B, (g+1)·q·B);
  3. it shuffles those samples with a seeded buffer, decodes, flips, and yields whole batches.
So ranks see disjoint samples with exactly equal batch counts for any number of shards — also
fewer shards than workers — and fewer than G·B samples per epoch are left out (different ones each
epoch). Undecodable samples are skipped, counted and logged, and made up from the worker's own
range so counts stay equal (a DDP rank that runs short would hang the others).

Resume: each batch carries its worker's position (raw samples consumed, samples produced, corrupt
count); the feed stores the last one per worker, and a resumed worker skips that many raw samples
without decoding them and continues its quota from there. Exact when world
size and workers are unchanged; otherwise the current epoch restarts from its beginning.
"""
from __future__ import annotations

import json
import posixpath
import random
import sys
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..seeding import text_seed
from .masks import make_mask
from .transforms import SampleError, decode_image


class DataError(RuntimeError):
    """A data problem that stops the run (missing shard, empty list, too many corrupt samples …)."""


class ShardCorrupt(DataError):
    """A shard that opened but whose content is bad (corrupt or truncated tar): counted and made up,
    unlike a missing or refused shard, which stops the run."""


@dataclass(frozen=True)
class ShardInfo:
    url: str
    samples: int | None = None


def _is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def _check_url(url: str, allow_pipe: bool) -> None:
    if _is_pipe(url) and not allow_pipe:
        raise DataError(f"refusing shard URL {url!r}: pipe: URLs run shell commands; "
                        "set data.allow_pipe=true only for URLs you trust")


def open_url(url: str, allow_pipe: bool = False):
    """A readable binary stream for a shard URL (fsspec, or an opted-in pipe:)."""
    _check_url(url, allow_pipe)
    if _is_pipe(url):
        import subprocess

        proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE)  # user opted in
        return proc.stdout
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except FileNotFoundError:
        raise DataError(f"shard not found: {url}") from None
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"cannot open shard {url}: {exc}") from None


def _read_text(url: str) -> str:
    stream = open_url(url)
    try:
        return stream.read().decode()
    finally:
        stream.close()


def _expand_index(spec: str) -> list[ShardInfo]:
    url, _, split = spec.partition("#")
    split = split or "train"
    try:
        index = json.loads(_read_text(url))
        shards = index["splits"][split]["shards"]
    except KeyError:
        raise DataError(f"{url}: index has no split {split!r}") from None
    except (ValueError, TypeError):
        raise DataError(f"{url}: not a valid shard index (JSON with splits/…/shards)") from None
    base = posixpath.dirname(url)
    return [ShardInfo(s["url"] if "://" in s["url"] or s["url"].startswith("/") else posixpath.join(base, s["url"]),
                      int(s["samples"])) for s in shards]


def expand_shard_specs(specs: list[str], allow_pipe: bool = False) -> list[ShardInfo]:
    """Brace patterns, index files and plain URLs -> an ordered shard list."""
    from braceexpand import braceexpand

    shards: list[ShardInfo] = []
    for spec in specs:
        _check_url(spec, allow_pipe)
        if spec.split("#")[0].endswith(".json"):
            shards += _expand_index(spec)
        else:
            shards += [ShardInfo(u) for u in braceexpand(spec)]
    if not shards:
        raise DataError("data.shards: the shard list is empty")
    return shards


def iter_tar_samples(url: str, allow_pipe: bool = False) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, grouping consecutive members by key as WebDataset does.

    A truncated or corrupt tar raises ShardCorrupt (a DataError) naming the shard and the last good key.
    """
    stream = open_url(url, allow_pipe)
    key, members, last_key = None, {}, "<start>"
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = posixpath.basename(info.name)
                dirname = posixpath.dirname(info.name)
                stem, dot, ext = base.partition(".")
                sample_key = posixpath.join(dirname, stem) if dirname else stem
                if not dot:
                    continue  # no extension: not part of any sample
                if sample_key != key:
                    if key is not None:
                        yield key, members
                        last_key = key
                    key, members = sample_key, {}
                members[ext.lower()] = tar.extractfile(info).read()
        if key is not None:
            yield key, members
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ShardCorrupt(f"shard {url}: corrupt or truncated tar after key {last_key} ({exc})") from None
    finally:
        stream.close()


def count_samples(url: str, allow_pipe: bool = False) -> int:
    return sum(1 for _ in iter_tar_samples(url, allow_pipe))


def worker_segments(counts: list[int], order: list[int], start: int, length: int) -> list[tuple[int, int, int]]:
    """Stream range [start, start+length) of the concatenated shards -> (shard, offset, count) pieces."""
    segments, pos = [], 0
    for shard in order:
        n = counts[shard]
        lo, hi = max(start, pos), min(start + length, pos + n)
        if lo < hi:
            segments.append((shard, lo - pos, hi - lo))
        pos += n
    return segments


class ShardStream(IterableDataset):
    """One rank's stream for one epoch. Yields dict batches (see `_batch`)."""

    def __init__(self, shards: list[ShardInfo], *, rank: int, world_size: int, num_workers: int, batch: int,
                 epoch: int, seed: int, resolution: int, channels: int, hflip: bool, shuffle_buffer: int,
                 on_mismatch: str, max_corrupt: int, occlusion: str, mask_seed: int, allow_pipe: bool,
                 resume: list[list[int]] | None = None, batches_done: int = 0):
        super().__init__()
        if any(s.samples is None for s in shards):
            raise DataError("internal: shard sample counts must be known before streaming")
        self.shards, self.counts = shards, [int(s.samples) for s in shards]
        self.rank, self.world_size, self.num_workers = rank, world_size, max(1, num_workers)
        self.batch, self.epoch, self.seed = batch, epoch, seed
        self.resolution, self.channels, self.hflip = resolution, channels, hflip
        self.shuffle_buffer, self.on_mismatch, self.max_corrupt = shuffle_buffer, on_mismatch, max_corrupt
        self.occlusion, self.mask_seed, self.allow_pipe = occlusion, mask_seed, allow_pipe
        # Per worker [raw samples consumed, samples produced, corrupt count] at the resume point.
        self.resume = resume or [[0, 0, 0]] * self.num_workers
        # DataLoader always starts its round-robin at process 0; after k batches it is logical worker
        # k % W's turn, so process i plays logical worker (i + k) % W.
        self.worker_offset = batches_done % self.num_workers
        total_workers = self.world_size * self.num_workers
        self.batches_per_worker = sum(self.counts) // (total_workers * batch)
        if self.batches_per_worker == 0:
            raise DataError(f"{sum(self.counts)} samples cannot fill one batch of {batch} for each of "
                            f"{total_workers} data workers (ranks × workers); use fewer workers or a smaller batch")

    @property
    def batches_per_rank(self) -> int:
        return self.batches_per_worker * self.num_workers

    def _raw_stream(self, worker: int) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        """The worker's range, buffer-shuffled; passes repeat (reshuffled) so make-up samples exist."""
        g = self.rank * self.num_workers + worker
        order = list(range(len(self.shards)))
        random.Random(text_seed("shards", self.seed, self.epoch)).shuffle(order)
        quota = self.batches_per_worker * self.batch
        segments = worker_segments(self.counts, order, g * quota, quota)
        for pass_index in range(1_000_000):
            rng = random.Random(text_seed("buffer", self.seed, self.epoch, g, pass_index))
            buffer: list[tuple[str, str, dict[str, bytes]]] = []
            for shard, offset, count in segments:
                url = self.shards[shard].url
                read = 0
                try:
                    for i, (key, members) in enumerate(iter_tar_samples(url, self.allow_pipe)):
                        read = i + 1
                        if i < offset:
                            continue
                        if i >= offset + count:
                            break
                        buffer.append((url, key, members))
                        if len(buffer) >= self.shuffle_buffer:
                            yield buffer.pop(rng.randrange(len(buffer)))
                    if read < offset + count:  # ended cleanly on a member boundary, but too early
                        raise ShardCorrupt(f"shard {url}: truncated: {read} samples, "
                                        f"the index says {self.counts[shard]}")
                except ShardCorrupt as exc:
                    yield ("", "", {"__error__": str(exc).encode()})  # truncated shard: counted below
            rng.shuffle(buffer)
            yield from buffer

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        if info is None:  # no DataLoader workers: emulate them in turn, in the same order
            workers_here = [(i + self.worker_offset) % self.num_workers for i in range(self.num_workers)]
        else:
            workers_here = [(info.id + self.worker_offset) % self.num_workers]
        iterators = {w: self._worker_batches(w) for w in workers_here}
        while iterators:
            for w in list(iterators):
                try:
                    yield next(iterators[w])
                except StopIteration:
                    del iterators[w]

    def _worker_batches(self, worker: int) -> Iterator[dict[str, Any]]:
        skip, produced, corrupt = self.resume[worker] if worker < len(self.resume) else (0, 0, 0)
        raw_pos = 0
        quota = self.batches_per_worker * self.batch
        images, keys, masks = [], [], []
        for url, key, members in self._raw_stream(worker):
            raw_pos += 1
            if raw_pos <= skip:
                continue
            if produced >= quota:
                return
            try:
                if "__error__" in members:
                    raise SampleError(members["__error__"].decode())
                img = decode_image(members, self.channels, self.resolution, self.on_mismatch)
            except SampleError as exc:
                corrupt += 1
                where = f"shard {url} key {key}: " if key else ""
                if self.on_mismatch == "error":
                    raise DataError(f"{where}{exc}") from None
                print(f"data: skipped {where}{exc} [{corrupt}/{self.max_corrupt} on rank {self.rank} "
                      f"worker {worker}]", file=sys.stderr, flush=True)
                if corrupt > self.max_corrupt:
                    raise DataError(f"more than data.max_corrupt_samples={self.max_corrupt} unusable samples "
                                    f"on rank {self.rank} worker {worker}; last: {where}{exc}") from None
                continue
            if self.hflip and random.Random(text_seed("flip", self.seed, self.epoch, key)).random() < 0.5:
                img = img.flip(-1)
            images.append(img)
            keys.append(key)
            if self.occlusion != "none":
                masks.append(make_mask(self.occlusion, self.resolution, key, self.mask_seed))
            produced += 1
            if len(images) == self.batch:
                yield self._batch(images, keys, masks, worker, [raw_pos, produced, corrupt])
                images, keys, masks = [], [], []
            if produced >= quota:
                return
        raise DataError(f"rank {self.rank} worker {worker}: no decodable samples in its shard range")

    def _batch(self, images, keys, masks, worker, position) -> dict[str, Any]:
        # position = [raw samples consumed, samples produced, corrupt count]: this worker's resume point
        out = {"images": torch.stack(images), "keys": keys, "worker": worker, "position": position,
               "corrupt": position[2]}  # images: (B, C, R, R) uint8
        if masks:
            out["masks"] = torch.stack(masks)  # (B, 1, R, R) uint8, 1 = visible
        return out
