import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# Tests are CPU-only and single-threaded per process so multi-process tests do not oversubscribe
# CI's two cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


COMPILE_CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def pytest_configure(config):
    """Every suite run starts with empty torch compile caches, in a folder of its own (removed at the
    end), as CI and a new user's machine do: code paths taken only on a cold cache (compile worker
    pools, first-time codegen) are tested on every run, not only on the first run of a new machine.
    The controller makes the folder; each pytest-xdist worker (started after this) takes a sub-folder
    of its own: torch's CPU code cache writes a kernel's .so in place, and two workers compiling the
    same kernel into one folder at once loaded a half-written file ("file too short")."""
    if hasattr(config, "workerinput"):
        base = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if base:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, config.workerinput["workerid"])
        return
    folder = tempfile.mkdtemp(prefix="lfbm-suite-compile-cache-")
    config._lfbm_compile_cache = folder
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")


def pytest_unconfigure(config):
    folder = getattr(config, "_lfbm_compile_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def root() -> Path:
    return ROOT


def stopped_at(run_dir: Path, images: int, dest: Path) -> Path:
    """A copy of `run_dir` as a run killed right after its snapshot at `images` would have left it:
    the checkpoints after that one are gone (everything else, logs included, is as it was; a
    LFBM_TEST_KEYS_DIR folder named keys is left out)."""
    from lfbm_dist.training.checkpoint import latest, list_complete

    newer = {c.name for c in list_complete(run_dir) if int(c.name.split("-")[1]) > images}
    shutil.copytree(run_dir, dest, ignore=lambda folder, names: [n for n in names if n in newer or n == "keys"])
    assert latest(dest).name == f"ckpt-{images:012d}"
    return dest


def randomize_(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so tests do not run on the (near-identity) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


# The files that take longest (minutes of real processes each), longest first: pytest-xdist hands
# out whole files (--dist loadfile) in collection order, so starting these first keeps one worker
# from finishing a long file alone at the end while the others are idle. xdist would re-order the
# files by their number of tests (the README test, one test of two minutes, came last):
# pyproject.toml's addopts turn that off (--no-loadscope-reorder).
LONGEST_FIRST = [
    "test_elastic.py",
    "test_slurm.py",
    "test_distributed.py",
    "test_readme.py",
    "test_faults.py",
    "test_multinode.py",
    "test_fid.py",
    "test_gpu_proof.py",
    "test_benchmarks.py",
    "test_chain_graphs.py",
    "test_fastpath.py",
    "test_repro.py",
    "test_training_cpu.py",
]


def pytest_collection_modifyitems(config, items):
    """Longest files first (above). GPU-marked tests run where CUDA is (benchmarks/gpu_proof.py runs
    them first); elsewhere they are skipped with the reason, never silently passed."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/gpu_proof.py on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
