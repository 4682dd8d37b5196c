"""Graceful stop: the first SIGINT (Ctrl-C) or SIGTERM (scancel, preemption) asks the trainer to finish
the current step, write a checkpoint and exit; a second one, a moment later, exits at once.
(A launcher such as torchrun or `accelerate launch` forwards the signal its process group received to
its workers, so each worker sees the same Ctrl-C twice within milliseconds: that counts once.)

All ranks agree on stopping in the step's one tiny all-reduce (training/trainer.py), so a signal that
reaches only some ranks still stops every rank at the same step."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from ..lifetime import WaitInterrupted, waiting

log = logging.getLogger("lfbm_dist")


SAME_SIGNAL_S = 2.0  # a repeat within this long is the launcher forwarding the first one


class StopRequest:
    def __init__(self) -> None:
        self.signal: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None and time.monotonic() - self._first_at < SAME_SIGNAL_S:
            return  # the same stop, forwarded by the launcher
        if self.signal is not None:  # the second one: leave now, without a traceback
            sys.stderr.write(f"lfbm_dist: {name} again: exiting at once (no checkpoint)\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signal, self._first_at = name, time.monotonic()
        log.warning("%s: finishing this step, writing a checkpoint, then exiting (send it again to exit at once)", name)
        if waiting():  # blocked on data at a step's start: stop waiting (the last finished step is saved)
            raise WaitInterrupted(name)

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
