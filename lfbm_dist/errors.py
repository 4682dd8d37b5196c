"""The one base class of every failure a user can fix, and nothing else: a leaf module (it imports
nothing from the package) so that every package can raise its own kind and every entry point catches
them all with `except LfbmError` (cli.run), without importing the packages that define them."""

from __future__ import annotations


class LfbmError(Exception):
    """A known failure: str() is one line naming the problem and the fix (exit status 2)."""

    # True where the failure is the same on every rank (settings, not data): only rank 0 says it
    same_on_every_rank = False


class GracefulStop(Exception):
    """Raised after the stop checkpoint was written; str() is the one-line message, `code` the exit
    status (128 + the signal's number). Not an error: the run stopped as asked."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
