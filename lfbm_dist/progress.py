"""Progress for anything that takes more than a few seconds: a tqdm bar with ETA on a terminal,
and a plain line every `interval_s` seconds (the same numbers, tqdm's formatting) in logs."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("lfbm_dist")


class Progress:
    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "img",
        enabled: bool = True,
        interval_s: float = 10.0,
        initial: int = 0,
    ):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.n, self.start, self.interval_s = initial, time.monotonic(), interval_s
        self.initial = initial
        self._last = self.start
        self._bar = None
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(
                total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=False, file=sys.stderr
            )

    def text(self) -> str:
        return tqdm.format_meter(
            self.n,
            self.total,
            time.monotonic() - self.start,
            prefix=self.desc,
            unit=self.unit,
            ncols=0,
            initial=self.initial,
        )

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            log.info(self.text())

    def write(self, line: str) -> None:
        """A status line that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            log.info(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NO_PROGRESS = Progress(None, "", enabled=False)
