"""One job per run directory, and a hung or slow rank named within minutes (training/runlock.py,
training/watchdog.py, training/stragglers.py). Real launches: two training processes started at
the same moment, a SIGKILLed lock holder, two gloo ranks under `accelerate launch` with one stopped
by SIGSTOP or blocked in a function of the training loop, a rank slowed by a fault hook."""

import json
import os
import signal
import subprocess
import threading
import time

import psutil
import pytest
import torch
import yaml
from conftest import ROOT
from launch import command, env, run

from lfbm_dist.training.checkpoint import latest, list_complete, read_state, verify
from lfbm_dist.training.runlock import LOCK_NAME, RunDirLocked, RunLock

TINY = ["--config", "configs/test_tiny.yaml"]
pytestmark = pytest.mark.slow


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "error: " in ln]


def _start(kind: str, run_dir, *args: str, **extra_env) -> subprocess.Popen:
    return subprocess.Popen(
        command(kind, *TINY, f"train.run_dir={run_dir}", *args),
        cwd=ROOT, env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _ranks(run_dir) -> dict[int, psutil.Process]:
    """The training processes of a run, by their RANK."""
    found = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if f"train.run_dir={run_dir}" in " ".join(p.info["cmdline"] or []) and "RANK" in p.environ():
                found[int(p.environ()["RANK"])] = p
        except psutil.Error:
            continue
    return found


def _left(run_dir) -> list[psutil.Process]:
    left = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if f"train.run_dir={run_dir}" in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.Error:
            continue
    return left


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# ------------------------------------------------------------------------------ one job per run directory


def test_two_launches_on_one_run_directory_at_the_same_moment(tmp_path):
    """A double submission, three times: exactly one trains, the other is refused in one line naming
    the holder, and every checkpoint marked complete has all its files (their digests verified).
    The one that trains is stopped (SIGTERM: checkpoint, exit 143) only after the other has ended, so it
    holds the lease when the other asks however slowly either starts: a short run could finish and
    free the folder before a late second process looked."""
    for attempt in range(3):
        run_dir = tmp_path / f"r{attempt}"
        both = [_start("single", run_dir, "train.total_kimg=10", "train.snapshot_every_kimg=0.016", f"train.seed={s}",
                       LFBM_FAULT_STEP_SLEEP="0.3") for s in (1, 2)]  # fmt: skip
        _wait_for(lambda both=both: any(p.poll() is not None for p in both), 300, "one of the two to end")
        ended = [p for p in both if p.poll() is not None]
        assert len(ended) == 1, [(p.returncode, p.communicate()[1][-1500:]) for p in ended]  # not both
        refused, winner = ended[0], next(p for p in both if p is not ended[0])
        _, refused_err = refused.communicate(timeout=60)
        assert refused.returncode == 2, (refused.returncode, refused_err[-1500:])
        (line,) = _errors(refused_err)
        assert line.startswith(f"error: train.run_dir {run_dir} is in use by another job (host "), line
        assert f"pid {winner.pid}" in line and "give this one another train.run_dir" in line, line
        _wait_for(lambda d=run_dir: latest(d) is not None, 120, "the winner's first checkpoint")  # it is training
        os.killpg(winner.pid, signal.SIGTERM)
        _, winner_err = winner.communicate(timeout=120)
        assert winner.returncode == 143, (winner.returncode, winner_err[-1500:])  # a graceful stop
        complete = list_complete(run_dir)
        assert complete and all(verify(c) for c in complete)  # every file there, every digest right
        seed = {both[0].pid: 1, both[1].pid: 2}[winner.pid]
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["seed"] == seed  # the winner's
        assert not (run_dir / LOCK_NAME).exists()  # released at the end


def test_a_sigkilled_holder_is_taken_over_by_train_resume_auto(tmp_path):
    run_dir = tmp_path / "r"
    proc = _start("single", run_dir, "train.total_kimg=10", "train.snapshot_every_kimg=0.016",
                  LFBM_FAULT_STEP_SLEEP="0.2")  # fmt: skip
    _wait_for(lambda: latest(run_dir) is not None, 120, "a checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    held = json.loads((run_dir / LOCK_NAME).read_text())
    assert held["pid"] == proc.pid  # the lease is still there, its holder gone
    end = int(latest(run_dir).name.split("-")[1]) + 16
    resumed = run("single", *TINY, f"train.run_dir={run_dir}", "train.resume=auto", f"train.total_kimg={end / 1000}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "taking over the run directory from a vanished job" in resumed.stdout, resumed.stdout[-2000:]
    assert latest(run_dir).name == f"ckpt-{end:012d}" and not (run_dir / LOCK_NAME).exists()


def test_a_lease_from_another_host_is_stale_only_when_its_beat_stops(tmp_path):
    """A holder on another node cannot be asked whether it lives: its beat is watched (no clocks compared)."""
    lease = tmp_path / LOCK_NAME
    record = {"host": "node-17", "pid": 4242, "job": "slurm:99", "started": time.time(), "beat": 5, "token": "t"}
    lease.write_text(json.dumps(record))
    frozen = RunLock(tmp_path, stale_s=1.5, renew_s=0.2)
    started = time.monotonic()
    frozen.acquire()  # no beat for 1.5 s: a vanished holder (a lost node), taken over
    assert 1.4 < time.monotonic() - started < 30 and json.loads(lease.read_text())["pid"] == os.getpid()
    frozen.release()
    lease.write_text(json.dumps(record))
    stop = threading.Event()

    def beating():
        beat = 5
        while not stop.wait(0.2):
            beat += 1
            lease.write_text(json.dumps({**record, "beat": beat}))

    threading.Thread(target=beating, daemon=True).start()
    try:
        with pytest.raises(RunDirLocked, match="in use by another job \\(host node-17, pid 4242, job slurm:99"):
            RunLock(tmp_path, stale_s=1.5, renew_s=0.2).acquire()
    finally:
        stop.set()


# ------------------------------------------------------------------------------ hung ranks

HANG = ["train.total_kimg=10", "train.batch_per_gpu=4", "train.snapshot_every_kimg=0.016", "train.hang_floor_s=12",
        "train.hang_step_multiple=5", "train.log_every_kimg=1"]  # fmt: skip


def test_a_stopped_rank_is_named_and_the_run_resumes_bitwise(tmp_path):
    """Rank 1 of 2 stopped by SIGSTOP after the first snapshot: within the bound (12 s here) rank 0's
    first error line names rank 1, its host and pid and the step; RUN_DIR/hang/ holds the live rank's
    stacks; no process is left (the launcher ends the stopped one); train.resume=auto then continues
    bitwise to the uninterrupted run."""
    run_dir = tmp_path / "r"
    proc = _start("ddp2", run_dir, *HANG, LFBM_FAULT_STEP_SLEEP="0.3")
    _wait_for(lambda: latest(run_dir) is not None, 180, "the first snapshot")
    stopped = _ranks(run_dir)[1]
    stopped.suspend()  # SIGSTOP
    _, err = proc.communicate(timeout=180)
    first = _errors(err)[0]
    assert first.startswith("[rank 0] error: rank 1 (host "), err[-3000:]
    assert f"pid {stopped.pid}) stopped responding in step " in first and "could not write its stacks" in first
    assert f"{run_dir / 'hang'}/" in first and "train.resume=auto" in first, first
    assert (run_dir / "hang" / "rank0.txt").is_file() and not (run_dir / "hang" / "rank1.txt").exists()
    _wait_for(lambda: not _left(run_dir), 60, "every process of the run to end")
    newest = latest(run_dir)
    args = [a for a in HANG if not a.startswith("train.total_kimg")]
    end = int(newest.name.split("-")[1]) + 16
    resumed = run("ddp2", *TINY, f"train.run_dir={run_dir}", *args, f"train.total_kimg={end / 1000}",
                  "train.resume=auto", warm_ranks=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = tmp_path / "straight"
    again = run("ddp2", *TINY, f"train.run_dir={straight}", *args, f"train.total_kimg={end / 1000}", warm_ranks=True)
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = read_state(latest(straight)), read_state(latest(run_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_rank_blocked_in_a_function_is_named_with_that_function(tmp_path):
    """Rank 1 blocked in the loop (a fault hook that sleeps an hour after step 4): both ranks' first
    error line names rank 1 and the function it is in, read from rank 1's own stack dump."""
    run_dir = tmp_path / "r"
    proc = _start("ddp2", run_dir, *HANG, LFBM_FAULT_HANG_AT="4:1")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0
    for rank in (0, 1):
        first = next(ln for ln in _errors(err) if ln.startswith(f"[rank {rank}] error: "))
        assert "rank 1 (host " in first and "has not finished step 4" in first, first
        assert "it is in after_step (lfbm_dist/training/faults.py:" in first, first
    dump = (run_dir / "hang" / "rank1.txt").read_text()
    assert "Thread MainThread" in dump and "after_step" in dump and "lfbm-watchdog" in dump
    _wait_for(lambda: not _left(run_dir), 60, "every process of the run to end")


# ------------------------------------------------------------------------------ stragglers


def test_a_slow_rank_is_named_and_the_skew_reaches_the_trackers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "r"
    proc = run("ddp2", *TINY, f"train.run_dir={run_dir}", "train.total_kimg=0.064", "train.batch_per_gpu=4",
               "train.log_every_kimg=0.032", LFBM_FAULT_SLOW_RANK="1:0.3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [ln for ln in proc.stderr.splitlines() if "straggler:" in ln]
    assert warnings and all("rank 1 is " in w and "in its langevin phase" in w for w in warnings), proc.stderr
    assert len(warnings) <= 2  # at most one per logging interval (two here)
    assert "largest skew between ranks: " in proc.stdout and "(rank 1, langevin phase)" in proc.stdout
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    skew = [e.value for e in events.Scalars("perf/langevin_max_over_median")]
    assert skew and max(skew) > 1.5 and max(e.value for e in events.Scalars("perf/step_time_max_over_median")) > 1.2
