"""Graceful stop: the first SIGINT (Ctrl-C) or SIGTERM (scancel, preemption) asks the trainer to finish
the current step, write a checkpoint and exit; a second one exits at once.

All ranks agree on stopping in the step's one tiny all-reduce (training/trainer.py), so a signal that
reaches only some ranks still stops every rank at the same step."""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger("lfbm_dist")


class StopRequest:
    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:  # the second one: leave now, without a traceback
            sys.stderr.write(f"lfbm_dist: {name} again: exiting at once (no checkpoint)\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signal = name
        log.warning("%s: finishing this step, writing a checkpoint, then exiting (send it again to exit at once)", name)

    def install(self) -> StopRequest:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. an embedding application): no graceful stop
                pass
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def exit_code(self) -> int:
        return 128 + signal.Signals[self.signal].value if self.signal else 0


class GracefulStop(Exception):
    """Raised after the stop checkpoint was written; str() is the one-line message."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
