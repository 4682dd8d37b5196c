"""A process that outlives the process that started it is an orphan nobody asked for: a rank whose
launcher was killed (`kill -9` of `accelerate launch` or torchrun, whose elastic agent puts its workers
in sessions of their own, out of reach of the launcher's process group) would train on to the end, and
a DataLoader worker whose rank died would wait for its next index forever. On Linux the kernel can
tie a process's life to its parent's (prctl PR_SET_PDEATHSIG); elsewhere this is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits; True if it is in force.
    SIGKILL by default: the parent gone, nobody is left to coordinate a graceful stop, and the run's
    checkpoints are already atomic (the newest complete one is where `train.resume=auto` continues)."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request took effect: act on it now
        os.kill(os.getpid(), sig)
    return True


def launched_rank() -> bool:
    """This process is one rank of a launched job (torchrun / accelerate launch / torch elastic)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ)


class WaitInterrupted(Exception):
    """A stop (SIGTERM / SIGINT) arrived while this process was blocked waiting for data."""


_WAITING = [False]


@contextlib.contextmanager
def interruptible_wait() -> Iterator[None]:
    """Marks a blocking wait (the main process waiting on its DataLoader workers) that a stop request
    may cut short: the stop handler (training/signals.py) raises WaitInterrupted inside it, so a
    stalled source cannot hold a stop hostage for its whole timeout."""
    _WAITING[0] = True
    try:
        yield
    finally:
        _WAITING[0] = False


def waiting() -> bool:
    return _WAITING[0]
