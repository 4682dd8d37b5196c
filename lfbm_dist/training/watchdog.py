"""A hung rank named within minutes: a watchdog thread on every rank, talking over the job's key-value
store (the one torch.distributed already has), never over the process group that may be stuck.

Each rank's thread publishes a heartbeat every POLL_S (5 s; a tenth of a shorter floor) — its beat
counter (moves while the process runs at all), how many times the training loop made progress (a
step, a snapshot, an evaluation phase finished), its step, its phase and whether it is waiting in a
collective. A rank whose own loop has made no progress for longer than the bound looks at the others:
    bound = max(floor_s, multiple × the median of its recent step times)
armed only after the first `warmup_steps` steps (compilation and start-up are not steps) and the
long bound (the collective timeout) while an evaluation, a final snapshot or the image grids run.
Defaults: floor 120 s, 20 × the step time. 120 s because a healthy step never pauses that long —
a background snapshot costs seconds, a logging tick one host sync — while a 256² GPU step takes
well under a second and a CPU test's steps seconds; 20 × so that a slow job (minutes per step)
is judged by its own pace. A stopped rank is then named within floor + 3 polls + 10 s (≈ 2.5 min).

The culprits: ranks whose beat froze (a process that is not running: SIGSTOP, a debugger, a lost
node), else ranks not waiting in a collective with the fewest steps done. The first rank to judge
writes the verdict to the store; every live rank then writes its own Python stacks (all threads) to
RUN_DIR/hang/rank{R}.txt (and, on CUDA, the NCCL flight recorder's dump), waits briefly for the
culprits' stacks, prints one first error line naming the culprit(s), their host and pid, the step
they did not finish, for how long and the function they are in (read from their own dump; a
stopped rank cannot write one — the line says so), then where the stacks are and how to resume; the
live ranks wait for each other's lines (≤ 10 s) and exit, and the launcher ends the rest.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .. import private_apis

POLL_S = 5.0
HANG_EXIT = 2
_PREFIX = "lfbm/wd/"


class LocalStore:
    """The store of a one-process run (no process group): the same calls, in memory."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def set(self, key: str, value) -> None:
        self.values[key] = value.encode() if isinstance(value, str) else value

    def get(self, key: str) -> bytes:
        return self.values[key]

    def check(self, keys: list[str]) -> bool:
        return all(k in self.values for k in keys)

    def compare_set(self, key: str, expected: str, desired: str) -> bytes:
        if key not in self.values and expected == "":
            self.values[key] = desired.encode()
        return self.values.get(key, b"")

    def add(self, key: str, amount: int) -> int:
        value = int(self.values.get(key, b"0")) + amount
        self.values[key] = str(value).encode()
        return value


class Watchdog:
    def __init__(self, store, rank: int, world_size: int, run_dir: str | Path, *, floor_s: float, multiple: float,
                 warmup_steps: int, long_s: float, resume: str, dump_collectives: Callable[[Path], None] | None = None,
                 poll_s: float = POLL_S):  # fmt: skip
        self.store = store if store is not None else LocalStore()
        self.rank, self.world = rank, world_size
        self.hang_dir = Path(run_dir) / "hang"
        self.floor_s, self.multiple, self.warmup, self.long_s = floor_s, multiple, warmup_steps, long_s
        # a tenth of the floor, at most POLL_S: a short floor (a test's) is watched as closely
        self.poll_s = min(poll_s, max(0.5, floor_s / 10)) if floor_s > 0 else poll_s
        self.resume, self.dump_collectives = resume, dump_collectives
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        # written by the training thread, read by the watchdog's (plain attributes: the GIL suffices)
        self.step, self.phase_name, self.waiting, self.long = 0, "start", False, True
        self.progress_count, self.last_progress = 0, time.monotonic()
        self.steps_done, self._last_step_at = 0, time.monotonic()
        self.step_s: deque[float] = deque(maxlen=20)  # the recent steps' durations (after the warm-up)
        self._beat = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lfbm-watchdog", daemon=True)

    # ------------------------------------------------------------------ the training thread's calls
    def phase(self, name: str, step: int, waiting: bool = False, long: bool = False) -> None:
        """Where the loop is: `waiting` inside a collective; `long` for phases judged by the long bound."""
        self.phase_name, self.step, self.waiting, self.long = name, step, waiting, long

    def progress(self, step_done: bool = False) -> None:
        """The loop made progress (a step, a snapshot or an evaluation phase finished)."""
        now = time.monotonic()
        if step_done:
            self.steps_done += 1
            if self.steps_done > self.warmup:  # the first steps compile: not a pace to judge by
                self.step_s.append(now - self._last_step_at)
            self._last_step_at = now
        self.progress_count += 1
        self.last_progress = now
        self.long = False

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ the watchdog's thread
    def bound_s(self) -> float:
        if self.steps_done < self.warmup or self.floor_s <= 0:
            return float("inf")  # start-up and compilation are not steps; floor 0: off
        if self.long:
            return self.long_s
        pace = self.multiple * statistics.median(self.step_s) if self.step_s else 0.0  # none yet: the floor
        return max(self.floor_s, pace)

    def _run(self) -> None:
        self._publish()  # at once: a rank stopped before its first poll is still known by name
        while not self._stop.wait(self.poll_s):
            try:
                self._publish()
                verdict = self._verdict()
                if verdict is None and time.monotonic() - self.last_progress > self.bound_s():
                    verdict = self._judge()
                if verdict is not None:
                    self._report(verdict)
            except Exception as exc:  # noqa: BLE001 — the watchdog must never take the run down itself
                sys.stderr.write(f"[rank {self.rank}] watchdog: {type(exc).__name__}: {exc}\n")

    def _publish(self) -> None:
        self._beat += 1
        beat = {**self.me, "beat": self._beat, "progress": self.progress_count, "step": self.step,
                "phase": self.phase_name, "waiting": self.waiting,
                "stalled_s": time.monotonic() - self.last_progress}  # fmt: skip
        self.store.set(f"{_PREFIX}beat/{self.rank}", json.dumps(beat))

    def _beats(self) -> dict[int, dict]:
        keys = {r: f"{_PREFIX}beat/{r}" for r in range(self.world)}
        return {r: json.loads(self.store.get(k)) for r, k in keys.items() if self.store.check([k])}

    def _verdict(self) -> dict | None:
        key = f"{_PREFIX}verdict"
        return json.loads(self.store.get(key)) if self.store.check([key]) else None

    def _judge(self) -> dict | None:
        """Which ranks stopped the job; written to the store unless another rank judged first."""
        first = self._beats()
        time.sleep(2 * self.poll_s)  # long enough for every running rank to beat again
        if time.monotonic() - self.last_progress <= self.bound_s():
            return None  # this rank moved meanwhile: no hang
        self._publish()  # this thread is this rank's beat: it was judging, not stopped
        second = self._beats()
        frozen = [
            r
            for r in range(self.world)
            if r != self.rank and (second.get(r, {}).get("beat") == first.get(r, {}).get("beat"))
        ]
        live = {r: b for r, b in second.items() if r not in frozen}
        busy = {r: b for r, b in live.items() if not b["waiting"]} or live
        fewest = min((b["progress"] for b in busy.values()), default=0)
        culprits = frozen or sorted(r for r, b in busy.items() if b["progress"] == fewest)
        stalled = time.monotonic() - self.last_progress  # a frozen rank's own count stopped with it
        rows = [{"rank": r, **(second.get(r) or {}), "frozen": r in frozen} for r in culprits]
        for row in rows:
            row["stalled_s"] = max(row.get("stalled_s", 0.0), stalled if row["frozen"] else 0.0)
        verdict = json.dumps({"culprits": rows, "judged_by": self.rank, "bound_s": self.bound_s()})
        return json.loads(self.store.compare_set(f"{_PREFIX}verdict", "", verdict))

    def _report(self, verdict: dict) -> None:
        self.hang_dir.mkdir(parents=True, exist_ok=True)
        self._dump_stacks()
        culprits = verdict["culprits"]
        deadline = time.monotonic() + 10
        waiting_for = [c["rank"] for c in culprits if not c["frozen"] and c["rank"] != self.rank]
        while waiting_for and time.monotonic() < deadline:
            waiting_for = [r for r in waiting_for if not self.store.check([f"{_PREFIX}dumped/{r}"])]
            time.sleep(0.2)
        line = self.first_line(verdict)
        _say(f"[rank {self.rank}] error: {line}" if self.world > 1 else f"error: {line}")
        live = self.world - sum(c["frozen"] for c in culprits)
        self.store.add(f"{_PREFIX}printed", 1)
        deadline = time.monotonic() + 10
        while self.store.add(f"{_PREFIX}printed", 0) < live and time.monotonic() < deadline:
            time.sleep(0.2)  # every live rank's first line out before any rank exits
        os._exit(HANG_EXIT)

    def _dump_stacks(self) -> None:
        path = self.hang_dir / f"rank{self.rank}.txt"
        path.write_text(format_stacks(self.rank, self.me))
        if self.dump_collectives is not None:
            try:
                self.dump_collectives(self.hang_dir / f"nccl_trace_rank{self.rank}.bin")
            except Exception as exc:  # noqa: BLE001 — the stacks are written; the trace is a bonus
                path.write_text(path.read_text() + f"\n(NCCL flight recorder dump failed: {exc})\n")
        self.store.set(f"{_PREFIX}dumped/{self.rank}", "1")

    def first_line(self, verdict: dict) -> str:
        parts = [self._culprit_text(c) for c in verdict["culprits"]]
        return (
            f"{'; '.join(parts)} (the hang bound is {verdict['bound_s']:.0f} s); every live rank's stacks are in "
            f"{self.hang_dir}/; the newest complete checkpoint is intact: resume with: {self.resume}"
        )

    def _culprit_text(self, c: dict) -> str:
        who = f"rank {c['rank']} (host {c.get('host', '?')}, pid {c.get('pid', '?')})"
        step = f"step {c.get('step', '?')} ({c.get('phase', '?')})"
        if c["frozen"]:
            return (f"{who} stopped responding in {step}: no progress for {c.get('stalled_s', 0):.0f} s and no "
                    f"heartbeat for over {2 * self.poll_s:.0f} s (stopped by SIGSTOP or a debugger, or its node is "
                    "gone): it could not write its stacks")  # fmt: skip
        where = function_in(self.hang_dir / f"rank{c['rank']}.txt")
        return f"{who} has not finished {step} for {c.get('stalled_s', 0):.0f} s; it is in {where}"


def format_stacks(rank: int, me: dict) -> str:
    """Every thread's Python stack, the main thread first, each headed by its name."""
    names = {t.ident: t.name for t in threading.enumerate()}
    frames = private_apis.thread_frames()
    order = sorted(frames, key=lambda ident: ident != threading.main_thread().ident)
    out = [f"rank {rank}, host {me['host']}, pid {me['pid']}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n"]
    for ident in order:
        out.append(f"\nThread {names.get(ident, '?')} ({ident}), most recent call last:\n")
        out.extend(traceback.format_stack(frames[ident]))
    return "".join(out)


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def function_in(path: Path) -> str:
    """The innermost frame of the main thread in a rank's dump: 'function (file:line)'."""
    try:
        text = path.read_text()
    except OSError:
        return "an unknown function (it wrote no stack dump)"
    main = text.split("\nThread ")[1] if "\nThread " in text else ""
    frames = _FRAME.findall(main)
    if not frames:
        return "an unknown function (its dump has no main-thread frame)"
    file, line, func = frames[-1]
    return f"{func} ({_short(file)}:{line})"


def _short(file: str) -> str:
    for anchor in ("/lfbm_dist/", "/site-packages/"):
        if anchor in file:
            return file.split(anchor, 1)[1] if anchor == "/site-packages/" else "lfbm_dist/" + file.split(anchor, 1)[1]
    return file


def _say(line: str) -> None:
    """One write to stderr (ranks share the console), and the same line in this rank's log file."""
    import logging

    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode(errors="replace"))
    except (AttributeError, OSError, ValueError):
        print(line, file=sys.stderr)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(line + "\n")
            handler.flush()
