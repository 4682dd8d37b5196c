"""The shard loader with real tar shards, real worker processes and real 'rank' processes."""
import http.server
import json
import subprocess
import threading
from functools import partial

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import PYTHON, ROOT
from lfbm_dist.config import load_config
from lfbm_dist.data.shard_feed import ShardFeed, resolve_shards
from lfbm_dist.data.shards import DataError, ShardInfo, ShardStream, count_samples, expand_shard_specs
from shard_helpers import png_bytes, write_raw_tar, write_shards


def _stream(shards, **kw):
    args = dict(rank=0, world_size=1, num_workers=1, batch=4, epoch=0, seed=7, resolution=8, channels=3,
                hflip=False, shuffle_buffer=5, on_mismatch="convert", max_corrupt=10, occlusion="none",
                mask_seed=0, allow_pipe=False)
    args.update(kw)
    return ShardStream(shards, **args)


def _infos(paths):
    return [ShardInfo(str(p), count_samples(str(p))) for p in paths]


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [[13, 9, 17], [10, 10, 10, 10], [5, 8, 3, 11, 7, 6, 9]],
                         ids=["3shards", "4shards", "7shards"])
def test_two_ranks_two_workers_disjoint_equal_and_cover(tmp_path, sizes):
    paths = write_shards(tmp_path / "shards", sizes)
    procs = []
    for rank in range(2):
        out = tmp_path / f"rank{rank}.json"
        cmd = [PYTHON, str(ROOT / "tests/loader_rank.py"), str(rank), "2", "2", "3", "0", str(out)] + [str(p) for p in paths]
        procs.append((subprocess.Popen(cmd, cwd=ROOT / "tests", stderr=subprocess.PIPE, text=True), out))
    results = []
    for proc, out in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.read_text()))
    total, global_workers, batch = sum(sizes), 4, 3
    per_worker = total // (global_workers * batch)
    seen = []
    for r in results:
        assert len(r["batches"]) == r["expected"] == 2 * per_worker  # equal batch counts per rank
        assert all(len(b) == batch for b in r["batches"])
        seen += [k for b in r["batches"] for k in b]
    assert len(seen) == len(set(seen))  # disjoint
    assert len(seen) == global_workers * per_worker * batch  # the whole epoch plan is covered
    assert total - len(seen) < global_workers * batch  # at most one partial round left out
    all_keys = {f"s{s}_{i}" for s, n in enumerate(sizes) for i in range(n)}
    assert set(seen) <= all_keys


def test_epochs_reshuffle_and_are_reproducible(tmp_path):
    infos = _infos(write_shards(tmp_path, [8, 8, 8]))
    keys = lambda epoch: [k for b in _stream(infos, epoch=epoch) for k in b["keys"]]
    assert keys(0) == keys(0)
    assert keys(0) != keys(1) and sorted(keys(0)) == sorted(keys(1))


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(tmp_path):
    infos = _infos(write_shards(tmp_path, [11, 7, 9, 13]))
    full = [b for b in DataLoader(_stream(infos, num_workers=2, batch=2), batch_size=None, num_workers=2)]
    stop = 5
    positions = [[0, 0, 0], [0, 0, 0]]
    for b in full[:stop]:
        positions[b["worker"]] = b["position"]
    resumed = DataLoader(_stream(infos, num_workers=2, batch=2, resume=positions, batches_done=stop),
                         batch_size=None, num_workers=2)
    rest = [b["keys"] for b in resumed]
    assert rest == [b["keys"] for b in full[stop:]]
    for a, b in zip(resumed, full[stop:]):
        assert torch.equal(a["images"], b["images"])


def test_feed_state_roundtrip_through_config(tmp_path):
    write_shards(tmp_path / "s", [6, 6, 6, 6])
    cfg = load_config(ROOT / "configs/test_tiny.yaml", [
        "data.source=shards", f"data.shards={tmp_path}/s/train-{{000000..000003}}.tar", "data.resolution=16",
        "train.batch_per_gpu=3", "data.num_workers=2"])
    feed = ShardFeed(cfg, 0, 1, torch.device("cpu"))
    first = [feed.next_batch()["keys"] for _ in range(10)]  # 8 batches per epoch: now inside epoch 1
    state = feed.state_dict()
    tail = [feed.next_batch()["keys"] for _ in range(3)]
    again = ShardFeed(cfg, 0, 1, torch.device("cpu"))
    again.load_state_dict(json.loads(json.dumps(state)))
    assert [again.next_batch()["keys"] for _ in range(3)] == tail
    assert state["epoch"] == 1 and state["batches_done"] == 2 and len(first) == 10


def test_http_loopback_gives_the_same_samples(tmp_path):
    shard_dir = tmp_path / "shards"
    paths = write_shards(shard_dir, [6, 5, 7])
    index = {"format": "lfbm_dist-shards/1", "splits": {"train": {"samples": 18, "shards": [
        {"url": p.name, "samples": n} for p, n in zip(paths, [6, 5, 7])]}}}
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
        assert [x["keys"] for x in a] == [x["keys"] for x in b]
        assert all(torch.equal(x["images"], y["images"]) for x, y in zip(a, b))
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------------- bad data


def _collect(stream):
    return [k for b in stream for k in b["keys"]]


def test_corrupt_shard_is_named_and_counted(tmp_path, capsys):
    good = write_shards(tmp_path, [8])
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    keys = _collect(_stream([*_infos(good), ShardInfo(str(bad), 4)], batch=2))
    assert len(keys) == 12  # the full quota: the bad shard's 4 are made up from the worker's good range
    assert set(keys) == {f"s0_{i}" for i in range(8)}
    assert f"shard {bad}" in capsys.readouterr().err


def test_truncated_shard_is_named(tmp_path, capsys):
    (path,) = write_shards(tmp_path, [10])
    path.write_bytes(path.read_bytes()[:3000])  # mid third member (the rest of the file is padding)
    keys = _collect(_stream([ShardInfo(str(path), 10)], batch=2))
    assert len(keys) == 10
    err = capsys.readouterr().err
    assert f"shard {path}: corrupt or truncated tar after key s0_1" in err


def test_shard_shorter_than_its_index_is_named(tmp_path, capsys):
    (path,) = write_shards(tmp_path, [6])
    keys = _collect(_stream([ShardInfo(str(path), 8)], batch=2))
    assert len(keys) == 8
    assert f"shard {path}: truncated: 6 samples, the index says 8" in capsys.readouterr().err


def test_member_not_an_image(tmp_path, capsys):
    path = write_raw_tar(tmp_path / "t.tar", {"a.png": png_bytes(1), "b.txt": b"hello", "c.png": b"garbage",
                                              "d.png": png_bytes(2)})
    keys = _collect(_stream([ShardInfo(str(path), 4)], batch=2))
    err = capsys.readouterr().err
    assert f"shard {path} key b: no image member (has: txt)" in err
    assert f"shard {path} key c: cannot decode .png" in err
    assert sorted(set(keys)) == ["a", "d"]


@pytest.mark.parametrize("mode,expect", [("skip", "skipped"), ("error", "raise")])
def test_wrong_size_and_mode(tmp_path, capsys, mode, expect):
    path = write_raw_tar(tmp_path / "t.tar", {"a.png": png_bytes(1), "big.png": png_bytes(2, size=12),
                                              "gray.png": png_bytes(3, mode="L"), "d.png": png_bytes(4)})
    stream = _stream([ShardInfo(str(path), 4)], batch=2, on_mismatch=mode)
    if expect == "raise":
        with pytest.raises(DataError, match=f"shard {path} key big: image is 12×12, expected 8×8"):
            _collect(stream)
        return
    assert sorted(set(_collect(stream))) == ["a", "d"]
    err = capsys.readouterr().err
    assert "key big: image is 12×12, expected 8×8" in err and "key gray: image mode L, expected RGB" in err


def test_convert_mode_fixes_size_and_mode(tmp_path):
    path = write_raw_tar(tmp_path / "t.tar", {"big.png": png_bytes(2, size=12), "gray.png": png_bytes(3, mode="L")})
    (batch,) = list(_stream([ShardInfo(str(path), 2)], batch=2))
    assert batch["images"].shape == (2, 3, 8, 8)


def test_too_many_corrupt_samples_stops(tmp_path):
    path = write_raw_tar(tmp_path / "t.tar", {f"k{i}.png": b"garbage" for i in range(6)})
    with pytest.raises(DataError, match="more than data.max_corrupt_samples=2"):
        _collect(_stream([ShardInfo(str(path), 6)], batch=2, max_corrupt=2))


def test_missing_url_empty_list_and_pipe(tmp_path):
    cfg = load_config(ROOT / "configs/test_tiny.yaml",
                      ["data.source=shards", f"data.shards=[{tmp_path}/nope-000000.tar]"])
    with pytest.raises(DataError, match=f"shard not found: {tmp_path}/nope-000000.tar"):
        resolve_shards(cfg)
    with pytest.raises(DataError, match="shard list is empty"):
        expand_shard_specs([])
    with pytest.raises(DataError, match="refusing shard URL 'pipe:cat x.tar'"):
        expand_shard_specs(["pipe:cat x.tar"])
    with pytest.raises(DataError, match="shard not found"):
        list(_stream([ShardInfo(f"file://{tmp_path}/gone.tar", 8)]))


def test_too_few_samples_for_the_workers(tmp_path):
    with pytest.raises(DataError, match="cannot fill one batch"):
        _stream(_infos(write_shards(tmp_path, [5])), world_size=2, num_workers=2, batch=4)
