"""The snapshot commit on its own: each rank's writer job (training/snapshots.py `_Job`) with plain
values in place of an engine, two ranks as two threads over a real folder. A writer error, a missing
part and a timeout each end in one line, the unfinished directory is gone, and the previous
checkpoint stays the newest and intact."""

import itertools
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lfbm_dist import state_schema as schema
from lfbm_dist.training import checkpoint
from lfbm_dist.training.checkpoint import CheckpointError, latest, list_complete, read_state
from lfbm_dist.training.hooks import Hooks
from lfbm_dist.training.snapshots import Snapshots, _Job, poll_pauses

STATE = {f"param/w{i}": torch.full((64,), float(i)) for i in range(4)}


def _job(run_dir: Path, images: int, rank: int, world: int = 2, state: dict = STATE, **kw) -> _Job:
    root = checkpoint.checkpoint_root(run_dir)
    name = f"ckpt-{images:012d}"
    return _Job(
        tmp=root / f"{name}.tmp",
        final=root / name,
        state=state,
        shards=checkpoint.plan_shards(state, 300),  # 4 files of one tensor: two per rank
        rank=rank,
        world_size=world,
        texts={schema.TRAINER_STATE: json.dumps({schema.IMAGES_SEEN: images}), schema.CONFIG: "train: {}\n"},
        writer={"world_size": world},
        keep=5,
        run_dir=run_dir,
        images_seen=images,
        data_state={"rank": rank},
        **kw,
    )


def _snapshot(run_dir: Path, images: int, rank1=None, **kw) -> tuple[Exception | None, Exception | None]:
    """Both ranks' jobs; rank1(job) replaces rank 1's run. (rank 0's error, rank 1's error)."""
    jobs = [_job(run_dir, images, 0, **kw), _job(run_dir, images, 1, **kw)]
    jobs[0].tmp.mkdir(parents=True)
    errors: list[Exception | None] = [None, None]

    def go(rank):
        try:
            (rank1 or _Job.run)(jobs[1]) if rank == 1 else jobs[0].run()
        except CheckpointError as exc:
            errors[rank] = exc

    threads = [threading.Thread(target=go, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors[0], errors[1]


@pytest.fixture
def run_dir(tmp_path):
    run_dir = tmp_path / "run"
    assert _snapshot(run_dir, 64) == (None, None)  # the previous checkpoint, whole
    assert [c.name for c in list_complete(run_dir)] == ["ckpt-000000000064"]
    return run_dir


def _previous_intact(run_dir: Path) -> None:
    assert latest(run_dir).name == "ckpt-000000000064"
    assert torch.equal(read_state(latest(run_dir))["param/w3"], STATE["param/w3"])
    assert not list(checkpoint.checkpoint_root(run_dir).glob("*.tmp")), "the unfinished directory stays"


class FailingDisk(Hooks):
    def before_write(self) -> None:
        raise OSError(5, "Input/output error")


def test_a_writer_error_on_another_rank_ends_the_commit_in_its_line(run_dir):
    err0, err1 = _snapshot(run_dir, 128, rank1=lambda job: _Job.run(_with(job, hooks=FailingDisk())))
    assert err1 is not None and str(err1).startswith("rank 1 could not write ckpt-000000000128.tmp (OSError")
    assert err0 is not None and str(err0) == str(err1)  # rank 0 ends with rank 1's own line
    assert "\n" not in str(err0)
    _previous_intact(run_dir)


def test_a_part_reported_written_but_not_in_the_folder_is_named(run_dir):
    def elsewhere(job):  # a node whose run_dir is another folder: its files land there
        other = _with(job, tmp=run_dir.parent / "node-local" / job.tmp.name)
        other.tmp.mkdir(parents=True)
        other.write_my_part()
        (job.tmp / ".done-rank1").write_text("")  # the marker alone reaches rank 0

    err0, _ = _snapshot(run_dir, 128, rank1=elsewhere)
    assert err0 is not None and "state-00001-of-00004.safetensors is missing" in str(err0)
    assert "train.run_dir must be one folder shared by every node" in str(err0)
    _previous_intact(run_dir)


def test_a_rank_that_never_writes_its_part_ends_the_commit_at_the_timeout(run_dir):
    err0, _ = _snapshot(run_dir, 128, rank1=lambda job: None, timeout_s=0.5)
    assert err0 is not None and "rank(s) 1 did not write their part within 0.5 s" in str(err0)
    assert "the previous checkpoint is the newest" in str(err0)
    _previous_intact(run_dir)


def test_the_wait_backs_off_instead_of_polling_every_50_ms():
    """Bounded load on a shared file system: the commit looks at the markers after 10 ms, 20 ms, …,
    then once a second — 12 looks in a 5-s wait instead of 100."""
    pauses = list(itertools.islice(poll_pauses(), 12))
    assert pauses[:4] == [0.01, 0.02, 0.04, 0.08] and pauses[-1] == 1.0
    assert sum(pauses) > 5.0


def _with(job: _Job, **changes) -> _Job:
    import dataclasses

    return dataclasses.replace(job, **changes)


class TwoRankStandIn:
    """Rank 0 of two, the other rank's answer given: what check_shared_run_dir asks of an engine."""

    world_size, rank, is_main = 2, 0, True

    def __init__(self, other_sees_it: bool):
        self.other_sees_it = other_sees_it

    def broadcast_object(self, obj, src=0):
        return obj

    def barrier(self):
        pass

    def all_reduce_sum(self, flags):
        return flags + torch.tensor([0.0, 0.0 if self.other_sees_it else 1.0], dtype=flags.dtype)


def test_a_run_directory_that_another_rank_does_not_see_is_one_line_at_start(tmp_path):
    from lfbm_dist.config import ConfigError
    from lfbm_dist.training.session import check_shared_run_dir

    check_shared_run_dir(TwoRankStandIn(other_sees_it=True), tmp_path)
    assert list(tmp_path.iterdir()) == []  # the token is gone again
    with pytest.raises(ConfigError, match=r"is not shared: rank\(s\) 1 do not see what rank 0 wrote there"):
        check_shared_run_dir(TwoRankStandIn(other_sees_it=False), tmp_path)
    assert list(tmp_path.iterdir()) == []


class _SlowToFree(dict):
    """A state copy whose release takes a while (as a large one's does): until `released` is set."""

    released = threading.Event()

    def __del__(self):
        self.released.wait(30)


def test_a_stopping_rank_joins_its_writer_so_its_state_copy_is_not_freed_as_the_interpreter_ends(run_dir):
    # A rank other than 0 that stops after an error: its writer's part is written and the thread then
    # frees its copy of the state. Were the process to exit then, that would happen during interpreter
    # finalization, where torch's tensor deallocation aborts a daemon thread (exit −6, not the rank's
    # error). settle() returns only once the writer thread has ended.
    job = _job(run_dir, 64, rank=1, state=_SlowToFree(STATE))
    job.tmp.mkdir(parents=True)
    snapshots = Snapshots(SimpleNamespace(rank=1), cfg=None)
    snapshots.start(job)
    part_done, job = job.part_done, None  # the writer holds the only reference now
    assert part_done.wait(30)
    assert snapshots.writing  # its part is written; it is still releasing the state copy
    threading.Timer(0.2, _SlowToFree.released.set).start()
    snapshots.settle()
    assert not snapshots.writing
    assert (checkpoint.checkpoint_root(run_dir) / "ckpt-000000000064.tmp" / ".done-rank1").is_file()
