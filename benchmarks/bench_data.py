"""Decoded + augmented images/s per CPU core from local WebDataset shards. Prints JSON.

    python benchmarks/bench_data.py [--images 2000] [--resolutions 64 256] [--format jpg]

Shards are built from random crops of the colour photos shipped in scikit-image (real photo
content, so JPEG decode cost is realistic), then streamed by the training loader in ONE process with
one thread (no DataLoader workers): the figure is per core. Timing excludes the build.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _photos() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")]


def build(out: Path, n: int, resolution: int, fmt: str, quality: int) -> list[str]:
    import webdataset as wds

    rng = np.random.default_rng(0)
    photos = _photos()
    out.mkdir(parents=True, exist_ok=True)
    writer = wds.ShardWriter(str(out / "bench-%06d.tar"), maxcount=500, verbose=0, mtime=0, encoder=False)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.size) // 2, min(photo.size)))
        left = int(rng.integers(0, photo.size[0] - side + 1))
        top = int(rng.integers(0, photo.size[1] - side + 1))
        img = photo.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=quality)
        writer.write({"__key__": f"img{i:07d}", fmt: buf.getvalue()})
    writer.close()
    return sorted(str(p) for p in out.glob("bench-*.tar"))


def measure(urls: list[str], resolution: int, batch: int) -> dict:
    from lfbm_dist.data.shards import ShardInfo, ShardStream, count_samples

    shards = [ShardInfo(u, count_samples(u)) for u in urls]
    stream = ShardStream(shards, rank=0, world_size=1, num_workers=1, batch=batch, epoch=0, seed=0,
                         resolution=resolution, channels=3, hflip=True, shuffle_buffer=1000,
                         on_mismatch="convert", max_corrupt=0, occlusion="none", mask_seed=0, allow_pipe=False)
    start_cpu, start = time.process_time(), time.perf_counter()
    images = sum(b["images"].shape[0] for b in stream)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"resolution": resolution, "images": images, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "images_per_sec_per_core": round(images / cpu, 1), "images_per_sec_wall": round(images / wall, 1)}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.resolutions:
            urls = build(Path(tmp) / str(res), args.images, res, args.format, args.quality)
            measure(urls[:1], res, args.batch)  # warm-up: imports, page cache
            rows.append(measure(urls, res, args.batch))
    print(json.dumps({"benchmark": "data_loader_decode_augment", "format": args.format, "quality": args.quality,
                      "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                  "python": platform.python_version(), "torch": torch.__version__,
                                  "pillow": Image.__version__},
                      "results": rows}, indent=2))


if __name__ == "__main__":
    main()
