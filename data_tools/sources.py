"""Where images come from: each source lists (key, loader, label) items in a fixed order.

Keys are derived from relative paths ("img_align_celeba/000001.jpg" -> "000001"), with "/" and "."
replaced so WebDataset's key/extension split stays unambiguous.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
# The official LFBM CelebA 64² crop: rows 45..173, cols 25..153 of the 178×218 aligned image.
CELEBA_CROP_BOX = (25, 45, 153, 173)


class SourceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Item:
    key: str
    ref: str  # file path, or "zip::member"
    label: int = -1  # class index (-1 = none)


def make_key(rel_path: str) -> str:
    stem = rel_path.rsplit(".", 1)[0] if "." in Path(rel_path).name else rel_path
    return stem.replace("/", "__").replace(".", "_").replace(" ", "_")


def load_item(item: Item, zip_path: str | None) -> Image.Image:
    if zip_path is not None:
        with zipfile.ZipFile(zip_path) as zf:  # opened per item: workers share nothing
            data = zf.read(item.ref)
        return Image.open(io.BytesIO(data))
    return Image.open(item.ref)


def folder_items(root: Path, class_subfolders: bool) -> tuple[list[Item], list[str], str | None]:
    """Recursive image listing of a directory or a .zip; optional class = first path component."""
    if root.is_file() and root.suffix == ".zip":
        with zipfile.ZipFile(root) as zf:
            names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
        zip_path: str | None = str(root)
        rels = names
        refs = names
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        rels = [p.relative_to(root).as_posix() for p in paths]
        refs = [str(p) for p in paths]
        zip_path = None
    else:
        raise SourceError(f"{root}: not a directory or .zip file")
    if not rels:
        raise SourceError(f"{root}: no images found")
    classes = sorted({r.split("/")[0] for r in rels if "/" in r}) if class_subfolders else []
    items = []
    for rel, ref in zip(rels, refs):
        label = classes.index(rel.split("/")[0]) if class_subfolders and "/" in rel else -1
        items.append(Item(make_key(rel), ref, label))
    return items, classes, zip_path


def celeba_items(root: Path) -> list[Item]:
    folder = root / "img_align_celeba"
    if not folder.is_dir():
        raise SourceError(f"{root}: expected the CelebA folder img_align_celeba/ inside it")
    items = [Item(make_key(p.name), str(p)) for p in sorted(folder.glob("*.jpg"))]
    if not items:
        raise SourceError(f"{folder}: no .jpg images")
    return items


def celebahq_items(root: Path) -> list[Item]:
    folder = root / "CelebA-HQ-img"
    if not folder.is_dir():
        raise SourceError(f"{root}: expected the CelebAMask-HQ folder CelebA-HQ-img/ inside it")
    items = [Item(make_key(p.name), str(p)) for p in sorted(folder.glob("*.jpg"), key=lambda p: (len(p.name), p.name))]
    if not items:
        raise SourceError(f"{folder}: no .jpg images")
    return items


def celeba_partition(root: Path) -> dict[str, str] | None:
    """CelebA's official split file, when present: key -> 'train' | 'test' (valid counts as test)."""
    path = root / "list_eval_partition.txt"
    if not path.is_file():
        return None
    split = {}
    for line in path.read_text().split("\n"):
        parts = line.split()
        if len(parts) == 2:
            split[make_key(parts[0])] = "train" if parts[1] == "0" else "test"
    return split


def demo_arrays(name: str, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Packaged real images (uint8 (N, H, W) grayscale, native size; MNIST padded at 32²) and labels."""
    from lfbm_dist.data.memory import packaged_images

    images, labels = packaged_images(name, resolution)
    return images[:, 0].numpy(), labels.numpy()


Transform = Callable[[Image.Image], Image.Image]
