"""Write small real WebDataset shards for tests."""

import io
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(seed: int, size: int = 8, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    img = Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode=mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mode == "CMYK" else "PNG")
    return buf.getvalue()


def write_shards(out: Path, sizes: list[int], size: int = 8, prefix: str = "train") -> list[Path]:
    """Shards with keys s{shard}_{i}; every image is distinct. Returns shard paths."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, n in enumerate(sizes):
        path = out / f"{prefix}-{s:06d}.tar"
        with wds.TarWriter(str(path), mtime=0, encoder=False) as tw:
            for i in range(n):
                tw.write({"__key__": f"s{s}_{i}", "png": png_bytes(1000 * s + i, size)})
        paths.append(path)
    return paths


def write_raw_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A tar with exactly these members (for malformed-sample cases)."""
    import tarfile

    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path
