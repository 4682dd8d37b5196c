"""Writing checkpoints without stopping training.

A snapshot is taken at a step boundary on every rank at once: the full state is copied off the
training path (`engine.full_state`: ZeRO gathers its partitions, DDP clones; the only collective
part), then each rank writes its share of the state files and its data position in a background
thread while training continues. Rank 0's thread waits for every rank's part (marker files: no
collective may run outside the training thread), writes the manifest and COMPLETE and renames the
directory into place, then prunes. At most one snapshot is in flight: the next one first waits for it.

A failed write (disk full, a rank that could not write its part) removes the unfinished directory
and is reported at the next step: every rank votes on it in the step's guard, so all of them stop
together with one line; a half checkpoint is never visible, and the previous one stays the newest.
The final snapshot of a run (and a stop's) is waited for before the process exits. A rank leaving on
an error first lets its own part of the snapshot in flight reach the disk, and rank 0 its commit if
every part arrives soon: a crash right after a snapshot began does not cost that snapshot.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import state_schema as schema
from ..config import Config
from ..files import apply_umask, write_atomic
from . import checkpoint
from .checkpoint import COMPLETE_MARKER, MANIFEST, CheckpointError
from .hooks import NO_HOOKS, Hooks

log = logging.getLogger("lfbm_dist")
PART_GRACE_S = 120.0  # how long a failing rank waits for its own part of the snapshot in flight
COMMIT_GRACE_S = 20.0  # and rank 0 for the other parts (ranks that fail together finish theirs in seconds)


def poll_pauses(first_s: float = 0.01, longest_s: float = 1.0):
    """The commit's waits between looks at the marker files: doubling from first_s, capped at longest_s."""
    pause = first_s
    while True:
        yield pause
        pause = min(longest_s, pause * 2)


@dataclass
class _Job:
    """Everything one rank's writer needs: plain values and CPU tensors, no live training object."""

    tmp: Path
    final: Path
    state: dict
    shards: list[list[str]]
    rank: int
    world_size: int
    texts: dict[str, str]  # rank 0's small files: trainer_state.json, config.yaml
    writer: dict[str, Any]
    keep: int
    run_dir: Path
    images_seen: int
    data_state: dict = field(default_factory=dict)
    timeout_s: float = 1800.0
    hooks: Hooks = NO_HOOKS
    digests: dict = field(default_factory=dict)  # rank 0: every file's manifest entry, as its writer reported it
    part_done: threading.Event = field(default_factory=threading.Event)  # this rank's part written, or failed

    def write_my_part(self) -> None:
        """This rank's state files and data position; its marker carries their digests to rank 0."""
        self.hooks.before_write()
        count, digests = len(self.shards), {}
        for index, keys in enumerate(self.shards):
            if checkpoint.shard_owner(index, keys, self.world_size) == self.rank:
                digests.update(checkpoint.write_shard(self.tmp, index, keys, count, self.state))
        data_state = json.dumps(self.data_state, sort_keys=True)
        digests.update(checkpoint.write_text(self.tmp, schema.data_state_file(self.rank), data_state))
        write_atomic(self.tmp / f".done-rank{self.rank}", json.dumps(digests))

    def wait_for_ranks(self) -> None:
        """Rank 0: until every rank's part is on disk (or one says it failed, or the timeout). Marker
        files, not a collective: the training thread owns the process group. Polls back off from 10 ms
        to 1 s (a part takes seconds; 64 ranks' markers on a parallel file system are then a few
        metadata calls a second, not a thousand), so the wait is bounded in time and in load."""
        deadline = time.monotonic() + self.timeout_s
        pauses = poll_pauses()
        while True:
            failed = sorted(self.tmp.glob(".failed-rank*"))
            if failed:
                raise CheckpointError(f"{failed[0].read_text().strip()}")
            waiting = [r for r in range(self.world_size) if not (self.tmp / f".done-rank{r}").exists()]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"{self.tmp}: rank(s) {', '.join(map(str, waiting[:8]))} did not write their part within "
                    f"{self.timeout_s:g} s (train.collective_timeout_min); the previous checkpoint is the newest"
                )
            time.sleep(min(next(pauses), max(0.0, deadline - time.monotonic())))
        for marker in sorted(self.tmp.glob(".done-rank*")):
            try:
                self.digests.update(json.loads(marker.read_text()))
            except ValueError:
                pass  # a marker without its digests: its files count as missing below
        missing = [checkpoint.shard_name(i, len(self.shards)) for i in range(len(self.shards))]
        missing = [name for name in missing if name not in self.digests or not (self.tmp / name).is_file()]
        if missing:  # a rank said done but its file is not here: it wrote somewhere else
            raise CheckpointError(
                f"{self.tmp}: {missing[0]} is missing though its rank reported it written; train.run_dir "
                "must be one folder shared by every node"
            )
        for marker in self.tmp.glob(".done-rank*"):
            marker.unlink()

    def commit(self) -> None:
        """Rank 0: manifest, COMPLETE, rename into place, prune."""
        self.hooks.in_commit(self.images_seen)
        for name, text in self.texts.items():
            self.digests.update(checkpoint.write_text(self.tmp, name, text))
        manifest = checkpoint.manifest_text(self.tmp, len(self.shards), self.writer, self.digests)
        write_atomic(self.tmp / MANIFEST, manifest)
        write_atomic(self.tmp / COMPLETE_MARKER, "ok\n")
        apply_umask(self.tmp)
        if self.final.exists():  # same progress saved twice (e.g. final snapshot right after a periodic one)
            checkpoint.remove(self.final, self.hooks)
        self.tmp.rename(self.final)
        write_atomic(self.run_dir / schema.TRAINER_STATE, self.texts[schema.TRAINER_STATE])
        for old in checkpoint.list_complete(self.run_dir)[: -self.keep]:
            checkpoint.remove(old, self.hooks)
        root = checkpoint.checkpoint_root(self.run_dir)
        for stale in [*root.glob("*.tmp"), *root.glob("*.deleting")]:
            shutil.rmtree(stale, ignore_errors=True)

    def run(self) -> None:
        try:
            self.write_my_part()
            self.part_done.set()
            if self.rank == 0:
                self.wait_for_ranks()
                self.commit()
        except Exception as exc:  # writers report a full disk as OSError, RuntimeError or their own types
            root = checkpoint.checkpoint_root(self.run_dir)
            if checkpoint.is_disk_full(exc, root):
                error = checkpoint.disk_full(Path(getattr(exc, "filename", None) or self.tmp), root)
            elif isinstance(exc, CheckpointError):
                error = exc
            else:
                error = CheckpointError(
                    f"rank {self.rank} could not write {self.tmp.name} ({type(exc).__name__}: {exc})"
                )
            try:  # tell rank 0's writer at once (best effort: the disk may be the problem)
                write_atomic(self.tmp / f".failed-rank{self.rank}", str(error))
            except OSError:
                pass
            if self.rank == 0:
                shutil.rmtree(self.tmp, ignore_errors=True)  # give the space back; the newest complete one stays
            raise error from None
        finally:
            self.part_done.set()


class Snapshots:
    """The run's checkpoint writer (one per rank). `save` is collective: every rank calls it."""

    def __init__(self, engine, cfg: Config, hooks: Hooks = NO_HOOKS):
        self.engine, self.cfg, self.hooks = engine, cfg, hooks
        self._thread: threading.Thread | None = None
        self._part_done: threading.Event | None = None  # the thread's own part written (settle)
        self._error: CheckpointError | None = None

    def save(self, plain, trainer_state: dict, data_state: dict, final: bool, averages=None) -> None:
        """Snapshot now. In the background unless `final` (end of run, stop) or snapshot_async is off;
        a background write's failure is reported by `failed()` at the next step, a foreground one raises.
        averages: the run's weight averages (training/ema.py), kept in the same files."""
        t = self.cfg.train
        self.wait()  # at most one in flight; its failure, if any, is raised here
        # The file plan from the tensors' sizes, then a copy of only this rank's files' tensors
        # (collective: ZeRO gathers everything); training may then change the live tensors.
        sizes = {**self.engine.state_sizes(plain), **(averages.sizes() if averages is not None else {})}
        shards = checkpoint.plan_shards(sizes, int(t.snapshot_shard_mb * 2**20))
        rank, world = self.engine.rank, self.engine.world_size
        mine = {k for i, keys in enumerate(shards) if checkpoint.shard_owner(i, keys, world) == rank for k in keys}
        state = self.engine.full_state(plain, keep=mine)
        if averages is not None:  # every rank holds them whole (replicated parameters): no collective
            state.update(averages.state(keep=mine))
        self._assert_finite_everywhere(state)
        root = checkpoint.checkpoint_root(t.run_dir)
        name = f"ckpt-{int(trainer_state[schema.IMAGES_SEEN]):012d}"
        job = _Job(
            tmp=root / f"{name}.tmp",
            final=root / name,
            state=state,
            shards=shards,
            rank=self.engine.rank,
            world_size=self.engine.world_size,
            texts={
                schema.TRAINER_STATE: json.dumps(trainer_state, indent=2, sort_keys=True),
                schema.CONFIG: yaml.safe_dump(self.cfg.to_dict(), sort_keys=False),
            },
            writer=self.engine.layout(),
            keep=t.keep_snapshots,
            run_dir=Path(t.run_dir),
            images_seen=int(trainer_state[schema.IMAGES_SEEN]),
            data_state=data_state,
            timeout_s=t.collective_timeout_min * 60,
            hooks=self.hooks,
        )
        if self.engine.is_main:
            shutil.rmtree(job.tmp, ignore_errors=True)  # a crashed attempt's leftovers
            job.tmp.mkdir(parents=True)
        self.engine.barrier()  # the directory exists before any rank writes into it
        if final or not t.snapshot_async:
            job.run()
            self.engine.barrier()  # every rank returns once the checkpoint is in place
            return
        self.start(job)

    def start(self, job: _Job) -> None:
        """Write `job` in a daemon thread (this rank's part; rank 0 then commits every part)."""
        self._part_done = job.part_done  # not the job: its state copy is freed when the thread ends
        self._thread = threading.Thread(
            target=self._background, args=(job,), name=f"snapshot {job.final.name}", daemon=True
        )
        self._thread.start()

    @property
    def writing(self) -> bool:
        """A background write's thread is still alive (its part, its commit, or freeing its state copy)."""
        return self._thread is not None and self._thread.is_alive()

    def _assert_finite_everywhere(self, state: dict) -> None:
        """No checkpoint may hold NaN/Inf. Each rank checks its own part; one vote, so all refuse together."""
        try:
            checkpoint.assert_finite(state)
            own = None
        except CheckpointError as exc:
            own = exc
        found = self.engine.first_failure(str(own) if own is not None else None)  # one vote, every rank
        if found is not None:
            raise own or CheckpointError(f"{found[1]} (rank {found[0]}'s part of the state)")

    def _background(self, job: _Job) -> None:
        try:
            job.run()
        except CheckpointError as exc:
            self._error = exc

    def failed(self) -> CheckpointError | None:
        """This rank's finished background write's failure (no wait): the step's guard votes on it."""
        if not self.writing:
            self._thread = None
        return self._error if self._thread is None else None

    def settle(self) -> None:
        """On the way out after an error (no collectives: other ranks may be gone). The writer thread is
        a daemon, so without this the process's exit would cut its part short and rank 0's commit would
        never see it: the restart would resume from the snapshot before.

        Joined on every rank, not only waited for until its part is written: a writer still ending when
        the interpreter finalizes frees its copy of the state there, and torch releases the GIL inside a
        tensor's deallocation, so that daemon thread is ended through C++ frames and the stopping rank
        aborts ("terminate called without an active exception", exit −6) instead of exiting with its error."""
        thread, part_done = self._thread, self._part_done
        if not self.writing or part_done is None:
            return
        part_done.wait(PART_GRACE_S)
        thread.join(COMMIT_GRACE_S)  # another rank's writer ends once its part is written; rank 0's commits
        if thread.is_alive():
            what = "was not complete" if self.engine.rank == 0 else "was still being written"
            log.warning("lfbm_dist: %s %s when this process stopped; it is not used", thread.name, what)

    def wait(self) -> None:
        """Until the snapshot in flight is on disk; raises its failure."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
