"""data_tools.build_shards: deterministic builds, verify, every source layout."""

import hashlib
import json
import zipfile

import numpy as np
import pytest
from launch import module
from PIL import Image

from lfbm_dist.data.index import expand_shard_specs
from lfbm_dist.data.reader import iter_samples, sample_digest


def iter_tar_samples(url):
    return ((s.key, s.members) for s in iter_samples(url))


def build(*args, timeout=300):
    extra = ["--no-progress"] if args[0] != "verify" else []
    return module("data_tools.build_shards", *map(str, args), *extra, timeout=timeout)


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_rebuild_is_byte_identical_with_any_worker_count(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        build(
            "demo",
            "--name",
            "lfw",
            "--out",
            a,
            "--resolution",
            "16",
            "--samples-per-shard",
            "60",
            "--test-fraction",
            "0.1",
            "--workers",
            "1",
        ).returncode
        == 0
    )
    assert (
        build(
            "demo",
            "--name",
            "lfw",
            "--out",
            b,
            "--resolution",
            "16",
            "--samples-per-shard",
            "60",
            "--test-fraction",
            "0.1",
            "--workers",
            "2",
        ).returncode
        == 0
    )
    assert digests(a) == digests(b)
    index = json.loads((a / "index.json").read_text())
    assert index["splits"]["train"]["samples"] == 180 and index["splits"]["test"]["samples"] == 20
    assert [s["samples"] for s in index["splits"]["train"]["shards"]] == [60, 60, 60]
    first = index["splits"]["train"]["shards"][0]  # a checksum per sample, of exactly the bytes in the tar
    assert len(first["checksums"]) == 60
    assert all(first["checksums"][k] == sample_digest(m) for k, m in iter_tar_samples(str(a / first["url"])))
    ok = build("verify", a / "index.json")
    assert ok.returncode == 0 and "OK" in ok.stdout
    shard = a / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = build("verify", a / "index.json")
    assert bad.returncode == 1 and "train-000001.tar: size or sha256 differs" in bad.stderr


def _fake_photos(folder, sizes):
    rng = np.random.default_rng(0)
    for rel, (w, h) in sizes.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_folder_and_zip_sources_with_classes(tmp_path):
    photos = tmp_path / "photos"
    _fake_photos(
        photos, {"cats/a.png": (40, 30), "cats/b.jpg": (20, 20), "dogs/deep/c.png": (33, 50), "dogs/d.png": (16, 16)}
    )
    (photos / "notes.txt").write_text("not an image")
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zf:
        for p in sorted(photos.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(photos).as_posix())
    for src, out in ((photos, tmp_path / "f"), (tmp_path / "photos.zip", tmp_path / "z")):
        proc = build("folder", "--root", src, "--out", out, "--resolution", "16", "--class-subfolders")
        assert proc.returncode == 0, proc.stderr
    assert digests(tmp_path / "f") == digests(tmp_path / "z")  # same images, same keys, same bytes
    index = json.loads((tmp_path / "f/index.json").read_text())
    assert index["classes"] == ["cats", "dogs"]
    samples = dict(iter_tar_samples(str(tmp_path / "f/train-000000.tar")))
    assert sorted(samples) == ["cats__a", "cats__b", "dogs__d", "dogs__deep__c"]
    assert samples["dogs__deep__c"]["cls"] == b"1"
    from io import BytesIO

    assert Image.open(BytesIO(samples["cats__a"]["png"])).size == (16, 16)


def test_celeba_and_celebahq_layouts(tmp_path):
    _fake_photos(tmp_path / "celeba/img_align_celeba", {f"{i:06d}.jpg": (178, 218) for i in range(1, 6)})
    (tmp_path / "celeba/list_eval_partition.txt").write_text(
        "000001.jpg 0\n000002.jpg 0\n000003.jpg 0\n000004.jpg 1\n000005.jpg 2\n"
    )
    proc = build("celeba", "--root", tmp_path / "celeba", "--out", tmp_path / "c64", "--resolution", "64")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((tmp_path / "c64/index.json").read_text())
    assert index["splits"]["train"]["samples"] == 3 and index["splits"]["test"]["samples"] == 2
    assert index["settings"]["crop_box"] == [25, 45, 153, 173]
    _fake_photos(tmp_path / "hq/CelebA-HQ-img", {f"{i}.jpg": (1024, 1024) for i in (0, 1, 2, 10)})
    proc = build("celebahq", "--root", tmp_path / "hq", "--out", tmp_path / "hq256")
    assert proc.returncode == 0, proc.stderr
    shards = expand_shard_specs([str(tmp_path / "hq256/index.json")])
    keys = [k for k, _ in iter_tar_samples(shards[0].url)]
    assert keys == ["0", "1", "2", "10"]  # numeric file order, as CelebAMask-HQ names them
    from io import BytesIO

    _, members = next(iter_tar_samples(shards[0].url))
    assert Image.open(BytesIO(members["jpg"])).size == (256, 256)


def test_builder_errors_are_one_line(tmp_path):
    proc = build("celeba", "--root", tmp_path, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "expected the CelebA folder img_align_celeba/" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = build("celebahq", "--root", tmp_path, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "CelebA-HQ-img/" in proc.stderr
