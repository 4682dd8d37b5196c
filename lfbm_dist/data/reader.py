"""Samples of one tar shard, read with WebDataset's own tar iteration and member grouping, and
checked against the per-sample checksums the shard index records (data_tools.build_shards)."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import SampleError, ShardSkip
from .urls import DEFAULT_IO, IOOptions, open_url


@dataclass
class Sample:
    url: str
    key: str
    members: dict[str, bytes]  # {extension: bytes}, as WebDataset groups them


def sample_digest(members: dict[str, bytes]) -> str:
    """The checksum the index records for a sample: BLAKE2b-64 over its members (extension, length,
    bytes) in extension order. Cheap (≈ 1 GB/s) and catches any altered byte, JPEG pixel data too."""
    h = hashlib.blake2b(digest_size=8)
    for ext in sorted(members):
        data = members[ext]
        h.update(ext.encode())
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def verify(sample: Sample, checksums: dict[str, str]) -> None:
    expected = checksums.get(sample.key)
    if expected is None:
        raise SampleError("not listed in the index's checksums")
    actual = sample_digest(sample.members)
    if actual != expected:
        raise SampleError(f"checksum mismatch (index {expected}, content {actual}): altered or corrupt bytes")


def plain_cause(exc: BaseException) -> str:
    """What went wrong reading a tar, in words (no stream reprs: webdataset appends `@ <_io.…>`)."""
    text = str(exc).split(" @ <", 1)[0].strip()
    if isinstance(exc, EOFError) or text in ("unexpected end of data", "truncated header", "empty file"):
        return "the file ends inside a tar member: truncated"
    if isinstance(exc, tarfile.TarError):
        return f"not a readable tar ({text})" if text else "not a readable tar"
    return text or type(exc).__name__


def iter_samples(url: str, opts: IOOptions = DEFAULT_IO) -> Iterator[Sample]:
    """Samples in tar order. A corrupt, truncated or stalled shard raises ShardSkip naming the last
    good key, so the caller can count the rest of the shard as skipped."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    stream = open_url(url, opts)
    last = "<start>"
    try:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        for grouped in group_by_keys(files):
            key = grouped.pop("__key__")
            grouped.pop("__url__", None)
            yield Sample(url, key, grouped)
            last = key
    except ShardSkip as exc:
        raise ShardSkip(f"shard {exc} after key {last}", exc.unreachable) from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ShardSkip(f"shard {url}: corrupt or truncated tar after key {last} ({plain_cause(exc)})") from None
    finally:
        stream.close()


def count_samples(url: str, opts: IOOptions = DEFAULT_IO) -> int:
    return sum(1 for _ in iter_samples(url, opts))
