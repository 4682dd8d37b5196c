"""One run per run directory: the job that trains in RUN_DIR holds a lease on it for its lifetime.

Two jobs in one run directory (a double submission, two array tasks given one folder) both started
as a "new run" and wrote into the same temporary checkpoint folders: a checkpoint marked complete
with files missing, config.yaml naming one seed while every checkpoint held the other. Now rank 0
of a job (one holder per job) takes RUN_DIR/.lfbm-lock before anything in the folder is read or
written, and a second job is refused in one line naming the holder.

The primitive, and why: a lease file made by exclusive create (O_CREAT | O_EXCL), which NFS (v3 and
later), Lustre, GPFS and local disks all make atomic — unlike flock/fcntl locks, which some cluster
mounts do not support or silently keep node-local. It holds the holder's host, pid and job id and a
beat counter that a thread of the holder renews every RENEW_S (tmp + rename). A lease is stale —
taken over without manual cleanup — when its holder is this very job (an elastic restart or a
requeue with the same job id), when it is on this host and its process is gone (SIGKILL), or when
its beat has not moved for STALE_S as seen by the one asking (a lost node; no clock is compared, so
skew between nodes does not matter). Takers of a stale lease serialise on a second exclusive-create
file, so two of them cannot both win.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import LfbmError

log = logging.getLogger("lfbm_dist")
LOCK_NAME = ".lfbm-lock"
RENEW_S = 10.0  # the holder rewrites its beat this often
STALE_S = 60.0  # a beat that has not moved for this long (six renewals missed) is a vanished holder


class RunDirLocked(LfbmError):
    """Another job holds the run directory: one line naming it."""

    same_on_every_rank = True


def job_id() -> str | None:
    """Who the job is, across its ranks and restarts: Slurm's job (and array task), else torch elastic's run."""
    slurm = os.environ.get("SLURM_JOB_ID")
    if slurm:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm:{slurm}" + (f"_{task}" if task else "")
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    return f"elastic:{elastic}" if elastic and elastic != "none" else None


@dataclass
class Holder:
    host: str
    pid: int
    job: str | None
    started: float
    beat: int = 0
    token: str = ""

    def describe(self) -> str:
        job = f", job {self.job}" if self.job else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}{job}, since {since}"


def _read(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # half-written by a holder killed mid-write: treat as stale
        return Holder(host="?", pid=-1, job=None, started=0.0, beat=-1, token="unreadable")


def _alive_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The lease of one run directory, held by this process (rank 0 of the job) until release()."""

    def __init__(self, run_dir: str | Path, stale_s: float = STALE_S, renew_s: float = RENEW_S):
        self.path = Path(run_dir) / LOCK_NAME
        self.stale_s, self.renew_s = stale_s, renew_s
        self.me = Holder(socket.gethostname(), os.getpid(), job_id(), time.time(), 0, uuid.uuid4().hex)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_beat = -1
        self.lost: str | None = None  # set when another job took the lease over (this job must stop)

    # ------------------------------------------------------------------ taking it
    def acquire(self) -> None:
        """Hold the lease, or raise RunDirLocked naming the holder (after at most stale_s of watching)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None
        while True:
            if self._create():
                return self._start_renewing()
            seen = _read(self.path)
            if seen is None:
                continue  # released between our two looks
            verdict = self._judge(seen, deadline)
            if verdict == "alive":
                raise RunDirLocked(
                    f"train.run_dir {self.path.parent} is in use by another job ({seen.describe()}); one run "
                    "directory holds one job: wait for it to end, or give this one another train.run_dir"
                )
            if verdict == "stale" and self._take_over(seen):
                return self._start_renewing()
            if deadline is None:
                deadline = time.monotonic() + self.stale_s
                log.info(
                    "lfbm_dist: waiting up to %.0f s to see whether %s is still alive", self.stale_s, seen.describe()
                )
            time.sleep(min(1.0, self.renew_s / 4))

    def _judge(self, seen: Holder, deadline: float | None) -> str:
        """alive / stale / unknown (watch its beat a while longer)."""
        if seen.token == "unreadable":
            return "stale"  # a lease never finished
        if seen.host == self.me.host:  # asked directly, whatever the job says
            return "alive" if _alive_here(seen.pid) else "stale"
        if self.me.job is not None and seen.job == self.me.job:
            return "stale"  # our own job's earlier process on another node (an elastic restart, a requeue)
        if deadline is None:
            self._first_beat = seen.beat
            return "unknown"
        if seen.beat != self._first_beat:
            return "alive"
        return "stale" if time.monotonic() >= deadline else "unknown"

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(vars(self.me)))
        return True

    def _take_over(self, stale: Holder) -> bool:
        """Replace a stale lease — only if it is still the one judged stale, and only one taker at a time."""
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            if time.time() - _mtime(guard) > self.stale_s:  # a taker that died mid-way
                guard.unlink(missing_ok=True)
            return False
        try:
            if _read(self.path) != stale:
                return False
            log.info("lfbm_dist: taking over the run directory from a vanished job (%s)", stale.describe())
            self._write()
            return True
        finally:
            guard.unlink(missing_ok=True)

    # ------------------------------------------------------------------ holding it
    def _write(self) -> None:
        tmp = self.path.with_name(f"{LOCK_NAME}.{self.me.token}.tmp")
        tmp.write_text(json.dumps(vars(self.me)))
        os.replace(tmp, self.path)

    def _start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew, name="lfbm-runlock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            seen = _read(self.path)
            if seen is None or seen.token != self.me.token:
                self.lost = (
                    f"the run directory {self.path.parent} was taken over by another job "
                    f"({seen.describe() if seen else 'its lock file was removed'}) while this one was not "
                    "renewing its lock (stopped or unreachable for over a minute); stopping before writing more"
                )
                return
            self.me.beat += 1
            try:
                self._write()
            except OSError as exc:  # a full or unreachable disk: the run's own writes will say so
                log.warning("could not renew the run directory's lock: %s", exc)

    def release(self) -> None:
        """Give the lease up (normal end, a stop, an error); a lease taken over by someone else stays theirs."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_s)
        seen = _read(self.path)
        if seen is not None and seen.token == self.me.token:
            self.path.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
