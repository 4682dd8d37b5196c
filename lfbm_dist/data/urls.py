"""Opening shard and index URLs with bounded waiting.

Local paths and file:// open directly. Remote URLs (http(s)://, s3://, gs://, any fsspec protocol)
open through fsspec with its own connect and read timeouts (aiohttp's for http, botocore's for s3,
gcsfs's for gs), and every open and every read is retried a bounded number of times with
exponential backoff; a read that keeps failing raises ShardSkip naming the URL and byte offset.
So no read waits longer than about (retries + 1) × (connect_timeout + read_timeout) + the backoff —
one timed request per attempt (an HTTP stream is opened by its GET alone) — and every failed
attempt logs one line as it happens.
`pipe:` URLs run shell commands and are refused unless explicitly allowed.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DataError, ShardSkip

log = logging.getLogger("lfbm_dist")


@dataclass(frozen=True)
class IOOptions:
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 1.0  # first retry waits this long, then ×2 each time
    allow_pipe: bool = False


DEFAULT_IO = IOOptions()


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def check_url(url: str, allow_pipe: bool) -> None:
    if is_pipe(url) and not allow_pipe:
        raise DataError(
            f"refusing shard URL {url!r}: pipe: URLs run shell commands; "
            "set data.allow_pipe=true only for URLs you trust"
        )


def local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    return None if "://" in url or is_pipe(url) else Path(url)


def _storage_options(url: str, opts: IOOptions) -> dict[str, Any]:
    """fsspec's own timeout settings, per protocol."""
    protocol = url.split("://", 1)[0]
    if protocol in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=opts.connect_timeout_s, sock_read=opts.read_timeout_s)
        return {"client_kwargs": {"timeout": timeout}, "block_size": 0}  # block_size 0: one streamed GET
    if protocol in ("s3", "s3a"):
        return {
            "config_kwargs": {
                "connect_timeout": opts.connect_timeout_s,
                "read_timeout": opts.read_timeout_s,
                "retries": {"max_attempts": 1},
            }
        }  # retries are ours, one policy for all
    if protocol in ("gs", "gcs"):
        return {"requests_timeout": opts.read_timeout_s}
    return {}


def _transient() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [TimeoutError, ConnectionError, OSError]
    try:
        import aiohttp

        kinds.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        kinds.append(FSTimeoutError)
    except ImportError:
        pass
    return tuple(kinds)


def _open_remote(url: str, opts: IOOptions) -> BinaryIO:
    from fsspec.core import url_to_fs

    options = _storage_options(url, opts)
    block = options.pop("block_size", None)
    fs, path = url_to_fs(url, **options)
    if block == 0:
        # One timed request per attempt: fsspec's HTTP open asks the size (a HEAD) before its GET unless
        # given one, and a stream needs none — so a server that never answers costs one timeout, not two.
        return fs.open(path, "rb", block_size=0, size=-1)
    return fs.open(path, "rb")


def _really_missing(exc: FileNotFoundError) -> bool:
    """fsspec's HTTP backend reports a timed-out or refused request as FileNotFoundError too."""
    return not isinstance(exc.__cause__ or exc.__context__, _transient())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:120] or 'timed out'}"


def _with_retries(what: Callable[[], Any], url: str, opts: IOOptions, doing: str) -> Any:
    """what() with the bounded retries; every failed attempt says so at once, in one line (URL, what
    failed, attempt k of n, when the next one starts), so a wait is never silent."""
    delay, attempts = opts.backoff_s, opts.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return what()
        except FileNotFoundError as exc:
            if _really_missing(exc):
                raise DataError(f"shard not found: {url}") from None
            failure = _describe(exc.__cause__ or exc.__context__ or exc)
        except (ValueError, ImportError) as exc:  # bad URL, missing backend: retrying will not help
            raise DataError(f"cannot open {url}: {exc}") from None
        except _transient() as exc:
            failure = _describe(exc)
        if attempt == attempts:
            raise ShardSkip(f"{url}: {doing} failed after {attempts} attempts ({failure})", unreachable=True) from None
        log.warning(
            "%s: %s failed (%s); attempt %d of %d, next try in %g s", url, doing, failure, attempt, attempts, delay
        )
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


class _RetryingReader(io.RawIOBase):
    """A remote byte stream that reopens (and skips to where it was) when a read times out."""

    def __init__(self, url: str, opts: IOOptions):
        self.url, self.opts, self.offset = url, opts, 0
        self._f = _with_retries(lambda: _open_remote(url, opts), url, opts, "open")

    def readable(self) -> bool:
        return True

    def _reopen_at_offset(self) -> None:
        self._f.close()
        self._f = _open_remote(self.url, self.opts)
        remaining = self.offset
        while remaining:  # streamed HTTP cannot seek: read and drop what we already had
            chunk = self._f.read(min(remaining, 1 << 20))
            if not chunk:
                raise EOFError(f"{self.url}: shorter on reopening than before")
            remaining -= len(chunk)

    def readinto(self, buffer) -> int:
        first = [True]

        def read() -> bytes:
            if not first[0]:
                self._reopen_at_offset()
            first[0] = False
            return self._f.read(len(buffer))

        data = _with_retries(read, self.url, self.opts, f"reading at byte {self.offset}")
        buffer[: len(data)] = data
        self.offset += len(data)
        return len(data)

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


def open_url(url: str, opts: IOOptions = DEFAULT_IO) -> BinaryIO:
    """A readable binary stream for a shard or index URL (see the module docstring)."""
    check_url(url, opts.allow_pipe)
    if is_pipe(url):
        import subprocess

        proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE)  # the user opted in
        return proc.stdout  # type: ignore[return-value]
    path = local_path(url)
    if path is not None:
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise DataError(f"shard not found: {url}") from None
        except OSError as exc:
            raise DataError(f"cannot open {url}: {exc}") from None
    return io.BufferedReader(_RetryingReader(url, opts), buffer_size=1 << 20)


def read_text(url: str, opts: IOOptions = DEFAULT_IO) -> str:
    with open_url(url, opts) as stream:
        return stream.read().decode()
