"""The shard loader with real tar shards, real worker processes and real 'rank' processes."""

import http.server
import json
import logging
import subprocess
import threading
from functools import partial

import pytest
import torch
from conftest import PYTHON, ROOT
from shard_helpers import png_bytes, write_raw_tar, write_shards
from torch.utils.data import DataLoader

from lfbm_dist import state_schema as schema
from lfbm_dist.config import load_config
from lfbm_dist.data.errors import DataError
from lfbm_dist.data.index import ShardInfo, expand_shard_specs
from lfbm_dist.data.plan import EpochPlan, Layout
from lfbm_dist.data.reader import count_samples
from lfbm_dist.data.stream import DecodeOptions, ShardStream, StreamOptions
from lfbm_dist.training.build import BatchLayout, build_feed, resolve_shards


def _stream(
    shards,
    *,
    batch=4,
    world=1,
    rank=0,
    workers=1,
    epoch=0,
    streams=None,
    hflip=False,
    shuffle_buffer=5,
    on_mismatch="convert",
    max_corrupt=10,
    start_step=0,
    positions=None,
):
    """One rank's stream; `batch` is that rank's share of the global batch."""
    layout = Layout(world, 1, workers)
    plan = EpochPlan(tuple(s.samples for s in shards), batch * world, streams or world * workers, 7, epoch)
    options = StreamOptions(
        DecodeOptions(8, 3, hflip=hflip, on_mismatch=on_mismatch),
        shuffle_buffer=shuffle_buffer,
        max_corrupt=max_corrupt,
    )
    return ShardStream(shards, plan, rank, layout, options, start_step, positions)


def _infos(paths):
    return [ShardInfo(str(p), count_samples(str(p))) for p in paths]


def _collect(stream):
    return [k for chunk in stream for k in chunk.keys]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sizes", [[13, 9, 17], [10, 10, 10, 10], [5, 8, 3, 11, 7, 6, 9]], ids=["3shards", "4shards", "7shards"]
)
def test_two_ranks_two_workers_disjoint_equal_and_cover(tmp_path, sizes):
    paths = write_shards(tmp_path / "shards", sizes)
    procs = []
    for rank in range(2):
        out = tmp_path / f"rank{rank}.json"
        cmd = [PYTHON, str(ROOT / "tests/loader_rank.py"), str(rank), "2", "2", "4", "0", str(out)] + [
            str(p) for p in paths
        ]
        procs.append((subprocess.Popen(cmd, cwd=ROOT / "tests", stderr=subprocess.PIPE, text=True), out))
    results = []
    for proc, out in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.read_text()))
    total, global_batch = sum(sizes), 8
    steps = total // global_batch
    seen = []
    for r in results:
        assert len(r["steps"]) == r["expected_steps"] == steps  # equal batch counts per rank
        assert all(len(b) == 4 for b in r["steps"])
        seen += [k for b in r["steps"] for k in b]
    assert len(seen) == len(set(seen))  # disjoint
    assert len(seen) == steps * global_batch  # the whole epoch plan is covered
    assert total - len(seen) < global_batch  # at most one partial global batch left out
    all_keys = {f"s{s}_{i}" for s, n in enumerate(sizes) for i in range(n)}
    assert set(seen) <= all_keys


def test_epochs_reshuffle_and_are_reproducible(tmp_path):
    infos = _infos(write_shards(tmp_path, [8, 8, 8]))
    keys = lambda epoch: _collect(_stream(infos, epoch=epoch))
    assert keys(0) == keys(0)
    assert keys(0) != keys(1) and sorted(keys(0)) == sorted(keys(1))


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(tmp_path):
    infos = _infos(write_shards(tmp_path, [11, 7, 9, 13]))
    full = list(DataLoader(_stream(infos, workers=2, batch=4), batch_size=None, num_workers=2))
    stop = 3  # steps done
    positions = {c.stream: c.position for c in full if c.step < stop}
    resumed = list(
        DataLoader(
            _stream(infos, workers=2, batch=4, start_step=stop, positions=positions), batch_size=None, num_workers=2
        )
    )
    rest = [c for c in full if c.step >= stop]
    assert [c.keys for c in resumed] == [c.keys for c in rest]
    for a, b in zip(resumed, rest):
        assert torch.equal(a.images, b.images)


def test_feed_state_roundtrip_through_config(tmp_path):
    write_shards(tmp_path / "s", [6, 6, 6, 6])
    cfg = load_config(
        ROOT / "configs/test_tiny.yaml",
        [
            "data.source=shards",
            f"data.shards={tmp_path}/s/train-{{000000..000003}}.tar",
            "data.resolution=16",
            "train.batch_per_gpu=4",
            "data.num_workers=2",
        ],
    )
    layout, batch = Layout(1, 1, 2), BatchLayout(4, 4, 1)
    feed = build_feed(cfg, 0, layout, batch, torch.device("cpu"), streams=2)
    first = [feed.micro_batch(0, s, 0).keys for s in range(8)]  # 6 steps per epoch: now inside epoch 1
    state = feed.state_dict()
    tail = [feed.micro_batch(0, s, 0).keys for s in range(3)]
    again = build_feed(cfg, 0, layout, batch, torch.device("cpu"), streams=2)
    again.load_state_dicts([json.loads(json.dumps(state))])
    assert [again.micro_batch(0, s, 0).keys for s in range(3)] == tail
    assert state[schema.DATA_EPOCH] == 1 and state[schema.DATA_STEP] == 2 and len(first) == 8


def test_http_loopback_gives_the_same_samples(tmp_path):
    shard_dir = tmp_path / "shards"
    paths = write_shards(shard_dir, [6, 5, 7])
    index = {
        "format": "lfbm_dist-shards/1",
        "splits": {
            "train": {"samples": 18, "shards": [{"url": p.name, "samples": n} for p, n in zip(paths, [6, 5, 7])]}
        },
    }
    (shard_dir / "index.json").write_text(json.dumps(index))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(shard_dir))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.json"
        over_http = expand_shard_specs([url])
        on_disk = expand_shard_specs([str(shard_dir / "index.json")])
        assert [s.url.rsplit("/", 1)[1] for s in over_http] == [p.name for p in paths]
        a, b = list(_stream(over_http, hflip=True)), list(_stream(on_disk, hflip=True))
        assert [x.keys for x in a] == [x.keys for x in b]
        assert all(torch.equal(x.images, y.images) for x, y in zip(a, b))
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------------- bad data


def test_corrupt_shard_is_named_and_counted(tmp_path, caplog):
    good = write_shards(tmp_path, [8])
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    keys = _collect(_stream([*_infos(good), ShardInfo(str(bad), 4)], batch=2))
    assert len(keys) == 12  # the full quota: the bad shard's 4 are made up from the stream's good range
    assert set(keys) == {f"s0_{i}" for i in range(8)}
    assert f"shard {bad}" in caplog.text


def test_truncated_shard_is_named(tmp_path, caplog):
    (path,) = write_shards(tmp_path, [10])
    path.write_bytes(path.read_bytes()[:3000])  # mid third member (the rest of the file is padding)
    keys = _collect(_stream([ShardInfo(str(path), 10)], batch=2))
    assert len(keys) == 10
    assert f"shard {path}: corrupt or truncated tar after key s0_1" in caplog.text


def test_shard_shorter_than_its_index_is_named(tmp_path, caplog):
    (path,) = write_shards(tmp_path, [6])
    keys = _collect(_stream([ShardInfo(str(path), 8)], batch=2))
    assert len(keys) == 8
    assert f"shard {path}: truncated: 6 samples, the index says 8" in caplog.text


def test_member_not_an_image(tmp_path, caplog):
    path = write_raw_tar(
        tmp_path / "t.tar", {"a.png": png_bytes(1), "b.txt": b"hello", "c.png": b"garbage", "d.png": png_bytes(2)}
    )
    keys = _collect(_stream([ShardInfo(str(path), 4)], batch=2))
    assert f"shard {path} key b: no image member (has: txt)" in caplog.text
    assert f"shard {path} key c: cannot decode .png" in caplog.text
    assert sorted(set(keys)) == ["a", "d"]


@pytest.mark.parametrize("mode,expect", [("skip", "skipped"), ("error", "raise")])
def test_wrong_size_and_mode(tmp_path, caplog, mode, expect):
    caplog.set_level(logging.WARNING)
    path = write_raw_tar(
        tmp_path / "t.tar",
        {
            "a.png": png_bytes(1),
            "big.png": png_bytes(2, size=12),
            "gray.png": png_bytes(3, mode="L"),
            "d.png": png_bytes(4),
        },
    )
    stream = _stream([ShardInfo(str(path), 4)], batch=2, on_mismatch=mode)
    if expect == "raise":
        with pytest.raises(DataError, match=f"shard {path} key big: image is 12×12, expected 8×8"):
            _collect(stream)
        return
    assert sorted(set(_collect(stream))) == ["a", "d"]
    assert (
        "key big: image is 12×12, expected 8×8" in caplog.text and "key gray: image mode L, expected RGB" in caplog.text
    )


def test_convert_mode_fixes_size_and_mode(tmp_path):
    path = write_raw_tar(tmp_path / "t.tar", {"big.png": png_bytes(2, size=12), "gray.png": png_bytes(3, mode="L")})
    (chunk,) = list(_stream([ShardInfo(str(path), 2)], batch=2))
    assert chunk.images.shape == (2, 3, 8, 8)


def test_too_many_corrupt_samples_stops(tmp_path):
    path = write_raw_tar(tmp_path / "t.tar", {f"k{i}.png": b"garbage" for i in range(6)})
    with pytest.raises(DataError, match="more than data.max_corrupt_samples=2"):
        _collect(_stream([ShardInfo(str(path), 6)], batch=2, max_corrupt=2))


def test_missing_url_empty_list_and_pipe(tmp_path):
    cfg = load_config(
        ROOT / "configs/test_tiny.yaml", ["data.source=shards", f"data.shards=[{tmp_path}/nope-000000.tar]"]
    )
    with pytest.raises(DataError, match=f"shard not found: {tmp_path}/nope-000000.tar"):
        resolve_shards(cfg)
    with pytest.raises(DataError, match="shard list is empty"):
        expand_shard_specs([])
    with pytest.raises(DataError, match="refusing shard URL 'pipe:cat x.tar'"):
        expand_shard_specs(["pipe:cat x.tar"])
    with pytest.raises(DataError, match="shard not found"):
        _collect(_stream([ShardInfo(f"file://{tmp_path}/gone.tar", 8)]))


def test_too_few_samples_for_the_global_batch(tmp_path):
    with pytest.raises(DataError, match="cannot fill one global batch"):
        _stream(_infos(write_shards(tmp_path, [5])), world=2, workers=2, batch=4)
