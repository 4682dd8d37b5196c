"""Where a point ran, recorded in its point.json.

A point's numbers are bitwise repeatable (kill and rerun, resume) only on the same kind of processor,
the same thread count and the same software: measured here, 40 training steps of configs/mnist28.yaml
with 1 and with 2 CPU threads already differ in every weight, and a 40-kimg point re-run on another
machine (another CPU model) gave an anomaly AUPRC 0.026 away from the first run — as far as another seed. So every
record says where it came from, and a summary that mixes environments says so (report.py).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

# What decides the floating-point results; the commit is recorded too but is not part of this
# (later commits that keep the math give the same numbers, and docs/REPRODUCTION.md checks that).
NUMERIC_KEYS = ("device", "cpu_capability", "threads", "torch")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    """The checkout's commit (with '+dirty' for uncommitted changes), or 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def environment() -> dict:
    """This process's view of the machine; the harness's children inherit its environment variables,
    so their default thread count is the same as the one measured here."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "device": gpu or _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "commit": _commit(),
    }


def numeric_signature(env: dict | None) -> str:
    """One line naming what decides the numbers; 'not recorded' for records older than this field."""
    if not env:
        return "not recorded"
    return ", ".join(f"{k} {env.get(k)}" for k in NUMERIC_KEYS)
