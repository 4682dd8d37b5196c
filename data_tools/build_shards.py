"""Build WebDataset tar shards (+ a JSON index) for lfbm_dist, deterministically.

    python -m data_tools.build_shards celeba    --root /data/celeba --out data/celeba64 --resolution 64
    python -m data_tools.build_shards celebahq  --root /data/CelebAMask-HQ --out data/celebahq256 --resolution 256
    python -m data_tools.build_shards folder    --root photos/ (or photos.zip) --out data/photos --class-subfolders
    python -m data_tools.build_shards demo      --name lfw|mnist|digits --out data/lfw16 --resolution 16
    python -m data_tools.build_shards verify    data/celebahq256/index.json

Common options: --resolution, --filter (lanczos|bicubic|bilinear|box), --format (png|jpg|webp),
--quality, --channels (3|1), --samples-per-shard, --test-fraction + --split-seed, --workers.
The same input and options give byte-identical shards (fixed tar metadata, ordered workers).
Each sample is {"__key__", "<format>": encoded image, "cls": label} (label only when known).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lfbm_dist.data.reader import sample_digest
from lfbm_dist.data.transforms import square_resize
from lfbm_dist.files import file_digest, write_atomic

from .sources import (
    CELEBA_CROP_BOX,
    Item,
    SourceError,
    celeba_items,
    celeba_partition,
    celebahq_items,
    demo_arrays,
    folder_items,
    load_item,
)

FILTERS = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "box": Image.BOX}
INDEX_FORMAT = "lfbm_dist-shards/1"

# Worker globals (set by _init_worker): the options and, for demo sources, the arrays.
_OPTS: dict = {}
_ARRAYS: np.ndarray | None = None


def _init_worker(opts: dict) -> None:
    global _OPTS, _ARRAYS
    _OPTS = opts
    _ARRAYS = demo_arrays(opts["demo"], opts["resolution"])[0] if opts.get("demo") else None


def _encode_item(item: Item) -> tuple[str, bytes, int]:
    o = _OPTS
    if _ARRAYS is not None:
        img = Image.fromarray(_ARRAYS[int(item.ref)])
    else:
        img = load_item(item, o["zip_path"])
    img.load()
    if o["crop_box"]:
        img = img.crop(tuple(o["crop_box"]))
    img = img.convert("RGB" if o["channels"] == 3 else "L")
    img = square_resize(img, o["resolution"], FILTERS[o["filter"]])
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[o["format"]]
    params = {"quality": o["quality"]} if fmt in ("JPEG", "WEBP") else {"compress_level": 6}
    if fmt == "WEBP":
        params["method"] = 4
    img.save(buf, format=fmt, **params)
    return item.key, buf.getvalue(), item.label


def _split(items: list[Item], test_fraction: float, seed: int, partition: dict[str, str] | None):
    if partition is not None:
        return {
            "train": [i for i in items if partition.get(i.key, "train") == "train"],
            "test": [i for i in items if partition.get(i.key) == "test"],
        }
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_test = int(round(test_fraction * len(items)))
    test_ids = set(order[:n_test])
    return {
        "train": [it for k, it in enumerate(items) if k not in test_ids],
        "test": [it for k, it in enumerate(items) if k in test_ids],
    }


def build(
    items: list[Item], out: Path, opts: dict, partition: dict[str, str] | None = None, classes: list[str] | None = None
) -> Path:
    import webdataset as wds

    from lfbm_dist.progress import Progress

    out.mkdir(parents=True, exist_ok=True)
    splits = _split(items, opts["test_fraction"], opts["split_seed"], partition)
    index = {
        "format": INDEX_FORMAT,
        "settings": {k: v for k, v in opts.items() if k not in ("zip_path", "workers", "progress")},
        "classes": classes or [],
        "splits": {},
    }
    for split, split_items in splits.items():
        if not split_items:
            continue
        for stale in out.glob(f"{split}-*.tar"):
            stale.unlink()
        # mtime=0 and fixed user/group/mode make the tar bytes a function of the content only.
        writer = wds.ShardWriter(
            str(out / f"{split}-%06d.tar"),
            maxcount=opts["samples_per_shard"],
            maxsize=1e12,
            verbose=0,
            mtime=0,
            encoder=False,
        )
        digests: list[tuple[str, str]] = []  # (key, per-sample checksum), in write order
        with (
            mp.get_context("spawn").Pool(opts["workers"], _init_worker, (opts,))
            if opts["workers"] > 1
            else _InlinePool(opts) as pool
        ):
            results = pool.imap(_encode_item, split_items, chunksize=16)
            with Progress(len(split_items), f"{split} shards", enabled=opts["progress"]) as bar:
                for key, data, label in results:
                    members = {opts["format"]: data}
                    if label >= 0:
                        members["cls"] = str(label).encode()
                    writer.write({"__key__": key, **members})
                    digests.append((key, sample_digest(members)))
                    bar.update(1)
        writer.close()
        shards = []
        for path in sorted(out.glob(f"{split}-*.tar")):
            shards.append({"url": path.name, "samples": 0, "bytes": path.stat().st_size, "sha256": file_digest(path)})
        start = 0
        for shard in shards:  # ShardWriter starts a new shard every samples_per_shard samples
            shard["samples"] = min(opts["samples_per_shard"], len(split_items) - start)
            shard["checksums"] = dict(digests[start : start + shard["samples"]])
            start += shard["samples"]
        index["splits"][split] = {"samples": len(split_items), "shards": shards}
    index_path = out / "index.json"
    write_atomic(index_path, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index_path


class _InlinePool:
    """Single-process stand-in for multiprocessing.Pool (workers=1)."""

    def __init__(self, opts: dict):
        _init_worker(opts)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)


def verify(index_path: Path, progress: bool = True) -> list[str]:
    """Re-check every shard of an index: size and sha256 of the file, then each sample's checksum
    and the sample count. Returns the problems found (empty: the copy is intact)."""
    from lfbm_dist.data.errors import SampleError, ShardSkip
    from lfbm_dist.data.reader import iter_samples
    from lfbm_dist.data.reader import verify as verify_sample
    from lfbm_dist.progress import Progress

    problems = []
    index = json.loads(index_path.read_text())
    shards = [(split, shard) for split, info in index.get("splits", {}).items() for shard in info["shards"]]
    with Progress(sum(s["samples"] for _, s in shards), f"verifying {index_path}", enabled=progress) as bar:
        for _split, shard in shards:
            path = index_path.parent / shard["url"]
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            if path.stat().st_size != shard["bytes"] or file_digest(path) != shard["sha256"]:
                problems.append(f"{path}: size or sha256 differs from the index")
            count = 0
            try:
                for sample in iter_samples(str(path)):
                    count += 1
                    bar.update(1)
                    if "checksums" in shard:
                        try:
                            verify_sample(sample, shard["checksums"])
                        except SampleError as exc:
                            problems.append(f"{path} key {sample.key}: {exc}")
            except ShardSkip as exc:
                problems.append(str(exc))
                continue
            if count != shard["samples"]:
                problems.append(f"{path}: {count} samples, index says {shard['samples']}")
    return problems


def _common(p: argparse.ArgumentParser, resolution: int, fmt: str) -> None:
    p.add_argument("--out", required=True, type=Path, help="output directory (shards + index.json)")
    p.add_argument("--resolution", type=int, default=resolution)
    p.add_argument("--channels", type=int, choices=(1, 3), default=3)
    p.add_argument("--filter", choices=sorted(FILTERS), default="lanczos")
    p.add_argument("--format", choices=("png", "jpg", "webp"), default=fmt)
    p.add_argument("--quality", type=int, default=95, help="jpg/webp quality")
    p.add_argument("--samples-per-shard", type=int, default=2000)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfbm-shards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="source", required=True)
    p = sub.add_parser("celeba", help="CelebA img_align_celeba/ (official LFBM crop)")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--no-crop", action="store_true", help="skip the official 128×128 face crop")
    _common(p, 64, "png")
    p = sub.add_parser("celebahq", help="CelebAMask-HQ CelebA-HQ-img/")
    p.add_argument("--root", required=True, type=Path)
    _common(p, 256, "jpg")
    p = sub.add_parser("folder", help="any image folder or .zip, recursive")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--class-subfolders", action="store_true", help="label = first sub-folder")
    _common(p, 64, "png")
    p = sub.add_parser("demo", help="real images shipped in PyPI wheels")
    p.add_argument("--name", choices=("lfw", "mnist", "digits"), required=True)
    _common(p, 32, "png")
    p = sub.add_parser("verify", help="re-check an index.json: files, per-sample checksums, counts")
    p.add_argument("index", type=Path, help="the index.json of a shard folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    from lfbm_dist import logs

    logs.setup()
    args = _parser().parse_args(argv)

    if args.source == "verify":
        problems = verify(args.index, progress=not args.no_progress)
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{args.index}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    if args.resolution < 1 or args.samples_per_shard < 1 or args.workers < 1 or not 0 <= args.test_fraction < 1:
        print(
            "error: --resolution, --samples-per-shard, --workers must be >= 1 and --test-fraction in [0, 1)",
            file=sys.stderr,
        )
        return 2
    opts = {
        "source": args.source,
        "resolution": args.resolution,
        "channels": args.channels,
        "filter": args.filter,
        "format": args.format,
        "quality": args.quality,
        "samples_per_shard": args.samples_per_shard,
        "test_fraction": args.test_fraction,
        "split_seed": args.split_seed,
        "workers": args.workers,
        "progress": not args.no_progress,
        "crop_box": None,
        "zip_path": None,
        "demo": None,
    }
    partition, classes = None, None
    try:
        if args.source == "celeba":
            items = celeba_items(args.root)
            opts["crop_box"] = None if args.no_crop else list(CELEBA_CROP_BOX)
            partition = celeba_partition(args.root)
        elif args.source == "celebahq":
            items = celebahq_items(args.root)
        elif args.source == "folder":
            items, classes, opts["zip_path"] = folder_items(args.root, args.class_subfolders)
        else:
            opts["demo"] = args.name
            _, labels = demo_arrays(args.name, args.resolution)
            items = [Item(f"{args.name}_{i:06d}", str(i), int(labels[i])) for i in range(len(labels))]
        index_path = build(items, args.out, opts, partition, classes)
    except (SourceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = json.loads(index_path.read_text())["splits"]
    print(
        f"wrote {index_path}: "
        + ", ".join(f"{k} {v['samples']} samples in {len(v['shards'])} shards" for k, v in summary.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
