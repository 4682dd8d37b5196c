"""Run the real entry points the way users do: one process, accelerate launch (DDP / DeepSpeed)."""

import os
import socket
import subprocess
from pathlib import Path

from conftest import PYTHON, ROOT

ACCELERATE = str(Path(PYTHON).parent / "accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(kind: str, *args: str) -> list[str]:
    if kind == "single":
        return [PYTHON, "-m", "lfbm_dist.train", *args]
    common = [
        "launch",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    if kind.startswith("ddp"):  # ddp2, ddp4: DDP on that many gloo ranks
        backend = ["--multi_gpu", "--num_processes", kind[3:]]
    elif kind.startswith("zero"):  # zero1, zero2 (2 ranks), zero2_1, zero2_4: stage _ ranks
        stage, _, procs = kind[4:].partition("_")
        backend = ["--use_deepspeed", "--num_processes", procs or "2", "--zero_stage", stage]
    else:
        raise ValueError(kind)
    return [ACCELERATE, *common, *backend, "lfbm_dist/train.py", *args]


def env(**extra: str) -> dict:
    e = dict(os.environ)
    # DeepSpeed JIT-compiles a CPU comm op on first use (~40 s): cache it outside the clone so
    # later CI runs on the same machine reuse it.
    ext_dir = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/lfbm_dist/torch_extensions"))
    e.update(
        {"OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": ext_dir, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    )
    # The environment's bin/ first, as in an activated shell (README's tests run that way): torch then
    # builds DeepSpeed's op with the environment's ninja in both, and ninja versions hash their build
    # commands differently, so mixing the system's ninja with it rebuilt the op (≈ 40 s) at every switch.
    e["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), e.get("PATH", "")])
    e.update(extra)
    return e


def run(kind: str, *args: str, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(kind, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env(**extra_env)
    )
