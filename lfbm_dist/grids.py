"""What `lfbm-slurm sweep` and `lfbm-repro` share: expanding axes into points, naming a point's run
directory, and writing a summary (summary.md beside summary.json). A leaf module: it imports nothing
from the package, so both commands use it without depending on each other."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any


def expand(axes: dict[str, list]) -> list[dict[str, Any]]:
    """{axis: [values]} -> every combination as {axis: value}, the first axis varying slowest."""
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


def point_label(pairs: list[tuple[str, str]]) -> str:
    """[('langevin.num_steps', '20'), ('data.occlusion', 'region:30')] -> 'num_steps-20_occlusion-region-30':
    a directory name (no ':' or '/' from the values)."""
    label = "_".join(f"{key.split('.')[-1]}-{value}" for key, value in pairs)
    return re.sub(r"[^\w.=-]", "-", label)


def write_summary(folder: Path, markdown: str, data: Any) -> None:
    """summary.md and summary.json of a grid or sweep, side by side."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.md").write_text(markdown)
    (folder / "summary.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
