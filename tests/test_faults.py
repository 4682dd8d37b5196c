"""The fault suite: what an operator meets on a real cluster ends in a line or two naming the problem and
the fix (or a counted, logged skip), within the configured bound, with nothing lost. Real parts:
loopback HTTP servers, tar shards with altered bytes, worker and rank processes, a small tmpfs,
signals, DeepSpeed ZeRO-2."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import torch
from conftest import PYTHON, ROOT
from launch import command, env, finished_run, module, run
from shard_helpers import write_shards

from lfbm_dist import state_schema as schema
from lfbm_dist.training.checkpoint import latest, list_complete, read_state
from lfbm_dist.training.signals import SAME_SIGNAL_S

TINY = ["--config", "configs/test_tiny.yaml"]
pytestmark = pytest.mark.slow


def _errors(proc) -> list[str]:
    """stderr lines that are not counted, logged skips or the I/O retries' progress lines."""
    return [ln for ln in proc.stderr.strip().splitlines() if ln and "skipped " not in ln and "next try in" not in ln]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished test_tiny run (`lfbm-train --config configs/test_tiny.yaml`): tests take a copy."""
    return finished_run(tmp_path_factory.mktemp("finished") / "r", *TINY)


def _retry_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if "next try in" in ln]


# ------------------------------------------------------------------------------ bounded I/O


class _Server:
    """A loopback HTTP server that accepts connections and then never answers (mode "silent"), or
    serves `payload` but stalls for ever after `stall_after` bytes (mode "stall")."""

    def __init__(self, mode: str, payload: bytes = b"", stall_after: int = 0):
        self.mode, self.payload, self.stall_after = mode, payload, stall_after
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.accepted_at: list[float] = []  # time.monotonic() of each connection
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            self.accepted_at.append(time.monotonic())
            if self.mode == "stall":
                conn.recv(65536)
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.payload)}\r\nContent-Type: application/x-tar\r\n\r\n"
                ).encode()
                conn.sendall(head + self.payload[: self.stall_after])  # then nothing, connection kept open

    def close(self):
        self.stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


FAST_IO = ["data.connect_timeout_s=1", "data.read_timeout_s=1", "data.retries=1"]


def test_a_server_that_never_answers_is_one_line_within_the_bound(tmp_path):
    server = _Server("silent")
    try:
        url = f"http://127.0.0.1:{server.port}/index.json"
        proc = run(
            "single",
            *TINY,
            f"train.run_dir={tmp_path / 'r'}",
            "data.source=shards",
            f"data.shards=[{url}]",
            *FAST_IO,
            timeout=120,
        )
    finally:
        server.close()
    assert proc.returncode == 2
    (line,) = _errors(proc)
    assert line.startswith("error: ") and url in line and "failed after 2 attempts" in line, line
    # one timed request per attempt (no HEAD before the GET), and the wait is visible as it happens
    assert len(server.conns) == 2, len(server.conns)
    (retry,) = _retry_lines(proc)
    assert url in retry and "attempt 1 of 2, next try in 1 s" in retry and "timed out" in retry.lower(), retry
    # the wait between attempts is the read timeout (1 s) plus the 1-s backoff: measured at the server,
    # so the process's start-up (machine-dependent) is not part of it; the upper bound is generous
    gap_s = server.accepted_at[1] - server.accepted_at[0]
    assert 1.9 < gap_s < 20, gap_s


def test_a_shard_that_stalls_halfway_is_a_counted_skip_then_one_line(tmp_path):
    (good,) = write_shards(tmp_path / "good", [32], size=16)
    (bad,) = write_shards(tmp_path / "bad", [32], size=16, prefix="stall")
    server = _Server("stall", bad.read_bytes(), stall_after=len(bad.read_bytes()) // 2)
    try:
        url = f"http://127.0.0.1:{server.port}/stall-000000.tar"
        index = {"splits": {"train": {"shards": [{"url": str(good), "samples": 32}, {"url": url, "samples": 32}]}}}
        (tmp_path / "index.json").write_text(json.dumps(index))
        common = [
            *TINY,
            "data.source=shards",
            f"data.shards=[{tmp_path}/index.json]",
            *FAST_IO,
            "train.batch_per_gpu=8",
            "train.total_kimg=0.128",  # two epochs of the 64 samples
        ]
        start = time.time()
        skipped = run("single", *common, f"train.run_dir={tmp_path / 'a'}", "data.max_corrupt_samples=100", timeout=300)
        assert time.time() - start < 240  # the stall is bounded by the timeouts, not the 120 s read (generous)
        # The stalled shard is read once per epoch (open, then one reopen for the retry), never again in
        # the epoch's make-up pass; each retry said so as it happened.
        assert len(server.conns) == 2 * 2, len(server.conns)
        assert len([ln for ln in _retry_lines(skipped) if url in ln and "attempt 1 of 2" in ln]) == 2
        stopped = run("single", *common, f"train.run_dir={tmp_path / 'b'}", "data.max_corrupt_samples=5", timeout=300)
    finally:
        server.close()
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert f"skipped shard {url}: reading at byte" in skipped.stderr  # the unread rest of the shard, counted
    assert stopped.returncode == 2
    (line,) = _errors(stopped)
    assert "more than data.max_corrupt_samples=5" in line and url in line, line


def test_a_truncated_shard_is_said_once_per_run_in_plain_words_and_counted_once(tmp_path):
    """A shard that ends inside a tar member, met in each of three epochs: one warning in the whole run,
    its cause in words (no stream reprs), and its unreadable samples counted once in data/corrupt_skipped."""
    import re

    from tb_read import read_events, scalar_series

    (good,) = write_shards(tmp_path / "good", [32], size=16)
    (bad,) = write_shards(tmp_path / "bad", [32], size=16, prefix="cut")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # ends inside a member
    index = {"splits": {"train": {"shards": [{"url": str(good), "samples": 32}, {"url": str(bad), "samples": 32}]}}}
    (tmp_path / "index.json").write_text(json.dumps(index))
    run_dir = tmp_path / "r"
    proc = run(
        "single",
        *TINY,
        "data.source=shards",
        f"data.shards=[{tmp_path}/index.json]",
        "train.batch_per_gpu=8",
        "train.total_kimg=0.192",
        "train.log_every_kimg=0.064",
        "data.max_corrupt_samples=100",
        f"train.run_dir={run_dir}",
        timeout=300,
    )  # fmt: skip  (three epochs of the 64 samples)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (said,) = [ln for ln in proc.stderr.splitlines() if str(bad) in ln]
    assert "the file ends inside a tar member: truncated" in said and "<_io" not in said, said
    count = int(re.search(r"\[(\d+) sample\(s\)", said).group(1))
    counted = scalar_series(read_events(run_dir / "tensorboard"), "data/corrupt_skipped")
    assert count > 0 and len(counted) == 3 and all(v == count for _, v in counted), (count, counted)


# ------------------------------------------------------------------------------ content integrity


def _altered_jpeg_shards(tmp_path):
    """Real JPEG shards built by lfbm-shards, then the entropy-coded bytes of one image altered (it
    still decodes, to different pixels)."""
    out = tmp_path / "lfw"
    subprocess.run(
        [
            PYTHON,
            "-m",
            "data_tools.build_shards",
            "demo",
            "--name",
            "lfw",
            "--out",
            str(out),
            "--resolution",
            "16",
            "--format",
            "jpg",
            "--samples-per-shard",
            "50",
            "--no-progress",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    shard = out / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    start = data.index(b"\xff\xda") + 20  # inside the scan data of the first image (after the SOS marker)
    data[start] ^= 0x5A
    shard.write_bytes(bytes(data))
    return out


def test_altered_jpeg_pixel_data_is_a_counted_skip_naming_shard_and_key(tmp_path):
    shards = _altered_jpeg_shards(tmp_path)
    from lfbm_dist.data.reader import iter_samples
    from lfbm_dist.data.transforms import decode_image

    first = next(iter_samples(str(shards / "train-000000.tar")))
    decode_image(first.members, 1, 16, "convert")  # the altered image still decodes: only the checksum knows
    common = [
        *TINY,
        "data.source=shards",
        f"data.shards=[{shards}/index.json]",
        "generator.image_channels=1",
        "train.total_kimg=0.6",  # three epochs of the 200 faces
        "train.batch_per_gpu=20",
        "train.log_every_kimg=0.2",
    ]
    proc = run("single", *common, f"train.run_dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = f"skipped shard {shards}/train-000000.tar key {first.key}: checksum mismatch"
    assert proc.stderr.count(line) == 1  # logged once per run, though skipped in each of the 3 epochs
    from tb_read import read_events, scalar_series

    series = [v for _, v in scalar_series(read_events(tmp_path / "r/tensorboard"), "data/corrupt_skipped")]
    assert series == [1.0, 1.0, 1.0]  # one unusable sample, counted once though skipped in each of the 3 epochs
    assert "1 unusable samples skipped" in proc.stdout
    unverified = run("single", *common, f"train.run_dir={tmp_path / 'u'}", "data.verify_checksums=false")
    assert unverified.returncode == 0 and "checksum" not in unverified.stderr  # what other loaders do: train on it


def test_shards_without_checksums_load_with_one_note(tmp_path):
    write_shards(tmp_path / "s", [16, 16])
    proc = run(
        "single",
        *TINY,
        f"train.run_dir={tmp_path / 'r'}",
        "data.source=shards",
        f"data.shards={tmp_path}/s/train-{{000000..000001}}.tar",
        "train.total_kimg=0.032",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("cannot be verified") == 1


# ------------------------------------------------------------------------------ one line per failure


def test_dataloader_worker_error_is_one_line(tmp_path):
    from shard_helpers import write_raw_tar

    members = {f"k{i}.png": b"garbage" for i in range(12)}
    write_raw_tar(tmp_path / "bad-000000.tar", members)
    proc = run(
        "single",
        *TINY,
        f"train.run_dir={tmp_path / 'r'}",
        "data.source=shards",
        f"data.shards=[{tmp_path}/bad-000000.tar]",
        "data.num_workers=2",
        "data.max_corrupt_samples=2",
        "train.batch_per_gpu=4",
    )
    assert proc.returncode == 2
    (line,) = _errors(proc)
    assert line.startswith("error: more than data.max_corrupt_samples=2") and "bad-000000.tar key k" in line
    assert "DataError" in (tmp_path / "r/logs/rank0.log").read_text()  # the full story, in the log file


def test_one_rank_failing_stops_every_rank_promptly_with_its_line(tmp_path):
    from shard_helpers import png_bytes, write_raw_tar

    good = write_shards(tmp_path / "g", [16])[0]
    write_raw_tar(tmp_path / "g/bad.tar", {f"b{i}.png": b"garbage" for i in range(16)} | {"ok.png": png_bytes(1)})
    index = {
        "splits": {
            "train": {
                "shards": [{"url": str(good), "samples": 16}, {"url": str(tmp_path / "g/bad.tar"), "samples": 16}]
            }
        }
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    start = time.time()
    proc = run(
        "ddp2",
        *TINY,
        f"train.run_dir={tmp_path / 'r'}",
        "data.source=shards",
        "data.resolution=16",
        f"data.shards=[{tmp_path}/index.json]",
        "data.max_corrupt_samples=3",
        "data.hflip=false",
        "train.batch_per_gpu=4",
        "train.collective_timeout_min=5",
        timeout=300,
    )
    assert proc.returncode != 0 and time.time() - start < 240  # not the 5-minute collective timeout
    ours = [ln for ln in _errors(proc) if "error:" in ln]
    assert any("more than data.max_corrupt_samples=3" in ln and "bad.tar" in ln for ln in ours), proc.stderr[-3000:]
    assert not any("Traceback" in ln for ln in proc.stderr.splitlines()[:5]), proc.stderr[:2000]


def _mount_tmpfs(path, size):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode:
        pytest.skip("cannot mount a tmpfs here")


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "600k")
    try:
        proc = run(
            "single",
            *TINY,
            f"train.run_dir={disk / 'r'}",
            "train.total_kimg=0.64",
            "train.snapshot_every_kimg=0.064",
            "train.keep_snapshots=50",
            "train.log_every_kimg=0.64",
        )
        assert proc.returncode == 2
        (line,) = _errors(proc)
        previous = latest(disk / "r")
        assert previous is not None
        assert line.startswith("error: disk full writing ") and f"previous checkpoint {previous.name} is intact" in line
        assert all(read_state(c) for c in list_complete(disk / "r"))  # each one whole and verified
    finally:
        subprocess.run(["umount", str(disk)])


def test_disk_full_on_two_ranks_gives_every_rank_the_cause_as_its_first_error_line(tmp_path):
    """Background snapshot, 2 DDP ranks, a disk that fills: whichever rank's output comes first, its
    first `error:` line is the disk-full line (not "failed on another rank"), and the previous
    checkpoint stays intact."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "600k")
    try:
        proc = run(
            "ddp2", *TINY, f"train.run_dir={disk / 'r'}", "train.batch_per_gpu=4", "train.total_kimg=0.64",
            "train.snapshot_every_kimg=0.064", "train.keep_snapshots=50", "train.log_every_kimg=0.64",
        )  # fmt: skip
        assert proc.returncode != 0
        errors = [ln for ln in proc.stderr.splitlines() if re.match(r"\[rank \d\] error: ", ln)]
        assert len(errors) == 2, proc.stderr[-3000:]  # one whole line each (written in one write)
        assert all("error: disk full writing " in ln and "is intact; free space" in ln for ln in errors), errors
        assert all(read_state(c) for c in list_complete(disk / "r"))
    finally:
        subprocess.run(["umount", str(disk)])


def test_a_resume_that_changes_the_run_or_meets_a_damaged_final_checkpoint_is_refused_in_one_line(tmp_path, finished):
    run_dir = tmp_path / "r"
    shutil.copytree(finished, run_dir)
    # another seed (or step size, learning rate, …) would continue the run as a different one
    proc = run("single", *TINY, f"train.run_dir={run_dir}", "train.resume=auto", "train.total_kimg=0.128",
               "train.seed=1", "langevin.step_size=0.2")  # fmt: skip
    assert proc.returncode == 2
    (line,) = _errors(proc)
    assert "resuming would change train.seed (0 → 1)" in line and "train.seed=0" in line, line
    # the final checkpoint damaged: named both by resume=auto and by the run's own command, with the fix
    ckpt = latest(run_dir)
    state_file = ckpt / "state-00000-of-00001.safetensors"
    state_file.write_bytes(state_file.read_bytes()[:100])
    earlier = [c for c in list_complete(run_dir) if c != ckpt]
    for args in (["train.resume=auto"], []):
        proc = run("single", *TINY, f"train.run_dir={run_dir}", *args)
        assert proc.returncode == 2, proc.stdout[-1000:]
        (line,) = _errors(proc)
        assert "state-00000-of-00001.safetensors is truncated or altered" in line, line
        fix = f"train.resume={earlier[-1]}" if earlier else "no earlier checkpoint exists"
        assert fix in line and "earlier run" not in line, line


def test_damaged_checkpoint_parts_are_refused_in_one_line(tmp_path, finished):
    run_dir = tmp_path / "r"
    shutil.copytree(finished, run_dir)
    ckpt = latest(run_dir)
    from lfbm_dist.training.checkpoint import CheckpointError, verify

    state_file = "state-00000-of-00001.safetensors"
    for part in (schema.data_state_file(0), state_file, schema.TRAINER_STATE, schema.CONFIG):
        original = (ckpt / part).read_bytes()
        (ckpt / part).write_bytes(original[: len(original) // 2])
        with pytest.raises(CheckpointError, match=f"cannot load checkpoint: {part} is truncated or altered"):
            verify(ckpt)  # what a resume checks first
        if part == schema.data_state_file(0):  # and once end to end: the resume refuses in one line
            proc = run("single", *TINY, f"train.run_dir={run_dir}", "train.resume=auto", "train.total_kimg=0.128")
            assert proc.returncode == 2
            (line,) = _errors(proc)
            assert f"{part} is truncated or altered" in line, line
        (ckpt / part).write_bytes(original)
    # changed in place, same size: said as a changed digest, not as a size that did not change
    original = (ckpt / state_file).read_bytes()
    (ckpt / state_file).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="same size, but its sha256 differs from the one written in the manifest"):
        verify(ckpt)
    (ckpt / state_file).write_bytes((ckpt / state_file).read_bytes()[:50])
    for name, args in (
        ("lfbm_dist.export", ["--run", str(run_dir), "--out", str(tmp_path / "e")]),
        ("lfbm_dist.evaluate", ["--run", str(run_dir), "--metrics", "recon", "eval.recon_samples=8",
                                "langevin.test_num_steps=2"]),
    ):  # fmt: skip
        proc = module(name, *args, timeout=300)
        assert proc.returncode == 2
        (line,) = _errors(proc)
        assert f"{state_file} is truncated or altered" in line, line


# ------------------------------------------------------------------------------ checkpoint lifecycle


def test_kill_while_pruning_never_leaves_a_complete_looking_directory_without_files(tmp_path):
    run_dir = tmp_path / "r"
    proc = run(
        "single",
        *TINY,
        f"train.run_dir={run_dir}",
        "train.snapshot_every_kimg=0.016",
        "train.keep_snapshots=1",
        LFBM_FAULT_KILL_IN_PRUNE="1",
    )
    assert proc.returncode == -signal.SIGKILL
    for ckpt in list_complete(run_dir):
        assert read_state(ckpt)  # every file there, as its manifest says
    assert latest(run_dir).name == "ckpt-000000000032"
    assert (
        run(
            "single",
            *TINY,
            f"train.run_dir={run_dir}",
            "train.snapshot_every_kimg=0.016",
            "train.keep_snapshots=1",
            "train.resume=auto",
        ).returncode
        == 0
    )
    assert [c.name for c in list_complete(run_dir)] == ["ckpt-000000000064"]
    assert not list((run_dir / "checkpoints").glob("*.deleting"))


def test_final_checkpoint_comes_before_image_grids_and_files_follow_the_umask(tmp_path):
    run_dir = tmp_path / "r"
    proc = run("single", *TINY, f"train.run_dir={run_dir}", LFBM_FAULT_FAIL_IMAGES="1")
    assert proc.returncode == 1 and "injected failure while logging images" in proc.stderr
    assert latest(run_dir).name == "ckpt-000000000064"  # the end of the run is safe
    modes = {p.stat().st_mode & 0o777 for p in latest(run_dir).iterdir()}
    assert modes == {0o644}, modes  # the umask (022 here): group- and world-readable, like any file the user makes


# ------------------------------------------------------------------------------ graceful stop


@pytest.mark.parametrize("kind", ["single", "ddp2"])
def test_sigterm_finishes_the_step_checkpoints_and_resumes_bitwise(tmp_path, kind):
    args = [
        *TINY,
        "train.total_kimg=0.128",
        "langevin.num_steps=3",
        "train.batch_per_gpu=4" if kind == "ddp2" else "train.batch_per_gpu=8",
    ]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(kind, *args, f"train.run_dir={straight}", warm_ranks=True).returncode == 0
    proc = subprocess.Popen(
        command(kind, *args, f"train.run_dir={stopped}"),
        cwd=ROOT,
        env=env(LFBM_FAULT_STEP_SLEEP="0.3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not (stopped / "tensorboard").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 if kind == "single" else proc.returncode != 0
    lines = [ln for ln in err.splitlines() if "stopped by SIGTERM" in ln]
    assert lines, err[-3000:]
    assert "resume with: " in lines[0] and "train.resume=auto" in lines[0]
    ckpt = latest(stopped)
    assert ckpt is not None and int(ckpt.name.split("-")[1]) < 128
    assert run(kind, *args, f"train.run_dir={stopped}", "train.resume=auto", warm_ranks=True).returncode == 0
    a, b = read_state(latest(straight)), read_state(latest(stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_signal_exits_at_once(tmp_path):
    """The first SIGINT asks for a checkpoint and an exit; a second one, later than the launcher's
    forwarding of the first, exits at once. The checkpoint write is slowed to a minute (a slow disk), so
    the process is still writing it when the second signal comes, however fast the machine; the second is
    sent only once the first is seen handled, so their gap is past SAME_SIGNAL_S however late the first
    handler ran."""
    proc = subprocess.Popen(
        command("single", *TINY, f"train.run_dir={tmp_path}/r", "train.total_kimg=10"),
        cwd=ROOT,
        env=env(LFBM_FAULT_STEP_SLEEP="0.2", LFBM_FAULT_SLOW_WRITE_S="60"),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    handled = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "SIGINT: finishing this step" in line:
                handled.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not (tmp_path / "r/tensorboard").exists():  # made after the signal handlers are installed
        assert proc.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert handled.wait(120), "".join(lines)[-3000:]
    time.sleep(SAME_SIGNAL_S + 0.5)  # not the launcher forwarding the first
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)  # not the minute of the slowed checkpoint
    reader.join(30)
    err = "".join(lines)
    assert proc.returncode == 130 and "exiting at once" in err, (proc.returncode, err[-3000:])


# ------------------------------------------------------------------------------ run directories


def test_run_directory_rules(tmp_path, finished):
    run_dir = tmp_path / "r"
    shutil.copytree(finished, run_dir)  # what `lfbm-train` TINY train.run_dir=… left
    # the same command again: the run is finished, it says so and exits 0 (README's promise)
    same = run("single", *TINY, f"train.run_dir={run_dir}")
    assert same.returncode == 0 and "already complete" in same.stdout, same.stderr[-2000:]
    # another run (another seed) into the same directory is refused in one line
    again = run("single", *TINY, f"train.run_dir={run_dir}", "train.seed=7")
    assert again.returncode == 2
    (line,) = _errors(again)
    assert (
        "holds checkpoints of an earlier run" in line and "train.resume=auto" in line and "train.overwrite=true" in line
    )
    done = run("single", *TINY, f"train.run_dir={run_dir}", "train.resume=auto")
    assert done.returncode == 0 and "already complete" in done.stdout
    fresh = run("single", *TINY, f"train.run_dir={run_dir}", "train.overwrite=true")
    assert fresh.returncode == 0
    (old,) = run_dir.glob("old-*")
    assert (old / "checkpoints").is_dir() and len(list((run_dir / "tensorboard").iterdir())) == 1
    dry = module("lfbm_dist.train", *TINY, "--dry-run", f"train.run_dir={run_dir}", "train.resume=auto", timeout=120)
    assert dry.returncode == 0 and "already complete" in dry.stdout and "# data: 256 images" in dry.stdout


def test_non_finite_config_numbers_are_refused(tmp_path):
    proc = run("single", *TINY, f"train.run_dir={tmp_path}", "optim.lr_generator=.inf")
    assert proc.returncode == 2
    assert _errors(proc) == ["error: command line: optim.lr_generator must be a finite number, got inf"]


# ------------------------------------------------------------------------------ the printed resume command


@pytest.mark.parametrize(
    "parent,expected",
    [
        # `accelerate launch` as installed: the python running the console script is not typed
        (["/v/bin/python3", "/v/bin/accelerate", "launch", "--multi_gpu", "lfbm_dist/train.py", "x=1"],
         ["/v/bin/accelerate", "launch", "--multi_gpu", "lfbm_dist/train.py", "x=1"]),
        # `python -m accelerate.commands.launch`: without the interpreter it would not run
        (["/v/bin/python3", "-m", "accelerate.commands.launch", "--multi_gpu", "lfbm_dist/train.py", "x=1"],
         ["/v/bin/python3", "-m", "accelerate.commands.launch", "--multi_gpu", "lfbm_dist/train.py", "x=1"]),
        (["/v/bin/python3", "-m", "torch.distributed.run", "--nproc_per_node", "2", "lfbm_dist/train.py"],
         ["/v/bin/python3", "-m", "torch.distributed.run", "--nproc_per_node", "2", "lfbm_dist/train.py"]),
        (["/v/bin/torchrun", "--nproc_per_node", "2", "lfbm_dist/train.py"],
         ["/v/bin/torchrun", "--nproc_per_node", "2", "lfbm_dist/train.py"]),
    ],
)  # fmt: skip
def test_printed_resume_command_runs_as_printed_however_launched(monkeypatch, parent, expected):
    from lfbm_dist.training import session
    from lfbm_dist.training.engine import launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["/repo/lfbm_dist/train.py", "x=1"]
    assert launch.launcher_command(argv, parent) == expected  # the launcher's command line, as given
    assert session.resume_command(argv, parent).endswith("train.resume=auto")
    assert session.resume_command(argv, parent).split()[0] == expected[0]


# ------------------------------------------------------------------------------ kill -9 of the launcher


def test_sigkill_of_the_launcher_leaves_no_rank_running(tmp_path):
    """torch elastic starts each rank in a session of its own, out of reach of the launcher's process
    group: killing the launcher's group with SIGKILL must still end every rank (lifetime.py)."""
    import psutil

    run_dir = tmp_path / "r"
    proc = subprocess.Popen(
        command("ddp2", *TINY, f"train.run_dir={run_dir}", "train.total_kimg=10"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(LFBM_FAULT_STEP_SLEEP="0.2"),
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not (run_dir / "tensorboard").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # training steps under way

    def ranks():
        found = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                cmdline = " ".join(p.info["cmdline"] or [])
            except psutil.Error:
                continue
            if f"train.run_dir={run_dir}" in cmdline and p.pid != proc.pid:
                found.append(p)
        return found

    assert ranks(), "no rank process found while the run was training"
    os.killpg(proc.pid, signal.SIGKILL)  # the operator's `kill -9` of the job's process group
    proc.wait(timeout=30)
    deadline = time.time() + 15
    while ranks() and time.time() < deadline:
        time.sleep(0.2)
    survivors = ranks()
    for p in survivors:  # do not leave them running whatever the verdict
        p.kill()
    assert not survivors, f"{len(survivors)} rank(s) outlived their launcher"


def test_sigterm_while_waiting_on_a_stalled_shard_checkpoints_and_exits(tmp_path):
    """A shard server stalls with long (default-like) timeouts: SIGTERM while the step waits for that
    data cuts the wait short — the checkpoint of the last finished step is written, the run exits in
    seconds with the signal's code, and no rank or DataLoader worker is left behind."""
    import psutil

    (good,) = write_shards(tmp_path / "good", [64], size=16)
    (bad,) = write_shards(tmp_path / "bad", [64], size=16, prefix="stall")
    server = _Server("stall", bad.read_bytes(), stall_after=len(bad.read_bytes()) * 9 // 10)  # late in the epoch
    run_dir = tmp_path / "r"
    try:
        url = f"http://127.0.0.1:{server.port}/stall-000000.tar"
        index = {"splits": {"train": {"shards": [{"url": str(good), "samples": 64}, {"url": url, "samples": 64}]}}}
        (tmp_path / "index.json").write_text(json.dumps(index))
        proc = subprocess.Popen(
            command("single", *TINY, "data.source=shards", f"data.shards=[{tmp_path}/index.json]",
                    "data.read_timeout_s=120", "data.retries=3", "data.num_workers=1", "train.batch_per_gpu=8",
                    "data.shuffle_buffer=8",
                    "train.total_kimg=1", f"train.run_dir={run_dir}"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        )  # fmt: skip
        deadline = time.time() + 120
        while not server.conns and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # the worker is blocked in the stalled read, the step waits for its chunk
        assert proc.poll() is None
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        took = time.time() - sent
    finally:
        server.close()
    assert proc.returncode == 143, err[-3000:]
    assert took < 120, took  # not the 4 × 120 s of the stalled read (generous: a loaded machine included)
    assert "while waiting for data" in err and "resume with:" in err, err[-2000:]
    ckpt = latest(run_dir)
    assert ckpt is not None
    saved = schema.trainer_state(ckpt)
    assert (
        saved[schema.IMAGES_SEEN] == 8 * saved[schema.STEPS_DONE] and saved[schema.STEPS_DONE] > 0
    )  # the last finished step
    time.sleep(1.0)
    left = [
        p for p in psutil.process_iter(["cmdline"]) if f"train.run_dir={run_dir}" in " ".join(p.info["cmdline"] or [])
    ]
    for p in left:
        p.kill()
    assert not left, "a rank or DataLoader worker outlived the stop"


def test_a_dataloader_worker_whose_rank_dies_exits(tmp_path):
    """SIGKILL of a rank whose DataLoader worker is blocked in a stalled read: the worker exits with
    it (lifetime.die_with_parent) instead of waiting out its timeouts as an orphan."""
    import psutil

    (bad,) = write_shards(tmp_path / "bad", [64], size=16, prefix="stall")
    server = _Server("stall", bad.read_bytes(), stall_after=len(bad.read_bytes()) // 2)
    try:
        url = f"http://127.0.0.1:{server.port}/stall-000000.tar"
        (tmp_path / "index.json").write_text(
            json.dumps({"splits": {"train": {"shards": [{"url": url, "samples": 64}]}}})
        )
        proc = subprocess.Popen(
            command("single", *TINY, "data.source=shards", f"data.shards=[{tmp_path}/index.json]",
                    "data.read_timeout_s=120", "data.num_workers=1", f"train.run_dir={tmp_path / 'r'}"),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
        )  # fmt: skip
        deadline = time.time() + 120
        while not server.conns and time.time() < deadline:
            time.sleep(0.1)
        workers = psutil.Process(proc.pid).children()
        assert workers, "no DataLoader worker found"
        proc.kill()
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        for p in alive:
            p.kill()
    finally:
        server.close()
    assert not alive, f"{len(alive)} worker(s) outlived their rank"
