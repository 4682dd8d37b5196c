"""Data errors. A DataError stops the run with its one-line message; a SampleError or a ShardSkip
is one unusable sample or the unread rest of a shard: counted, logged and made up."""

from __future__ import annotations

from ..errors import LfbmError


class DataError(LfbmError, RuntimeError):
    """A data problem that stops the run (missing shard, empty list, too many corrupt samples …)."""


class SampleError(ValueError):
    """This one sample is unusable; the message says why (shard and key are added by the caller)."""


class ShardSkip(DataError):
    """A shard that opened but could not be read to its end (corrupt, truncated, or stalled past the
    timeouts and retries): its remaining samples are skipped, counted and made up."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable  # reads kept failing or timing out: not read again this epoch
