"""Compilation paid once per cluster: where torch.compile keeps what it compiled.

A Langevin step graph costs tens of seconds of Inductor code generation and C++/Triton compilation
(docs/PERFORMANCE.md); without a persistent cache every requeue, elastic restart, Slurm array task and evaluation of a
finished run pays it again. Inductor's FX-graph cache (on by default) skips that work when it finds
the graph's compiled code in TORCHINDUCTOR_CACHE_DIR (Triton's kernels go under it too, unless
TRITON_CACHE_DIR says otherwise); what remains per process is Dynamo's trace (seconds).

Why a cache *folder on the run's file system* and not torch's portable cache artifacts
(torch.compiler.save_cache_artifacts): Inductor writes each entry as it is compiled, atomically
(temporary file + rename), so a process killed by SIGKILL or preemption leaves everything it had
compiled, while artifacts must be saved by a process that lives to save them; every rank, node and
array task reads the same folder with no coordination; and the entries are keyed by the graph, the
torch version, the device and the compiler settings, so one folder is safe across GPU kinds and
torch versions (a mismatch is a miss, never wrong code).

`perf.compile_cache`: auto = TORCHINDUCTOR_CACHE_DIR if the operator set it, else RUN_DIR/compile_cache
(lfbm-slurm sweeps pass SWEEP_ROOT/compile_cache to every task,
so the next array task starts warm); a path = that folder; either way one sub-folder per local rank
(below); off = torch's own per-machine default (a node-local temporary folder: warm only on the same
node). "The operator set it" is read from the environment as the process received it, before torch
was imported (lfbm_dist.COMPILE_CACHE_AT_START): importing torch._dynamo sets the variable to torch's
per-machine default, so a later look always found it set and every run used the per-machine folder —
a requeue on another node started cold. Where torch's compiler was imported before lfbm_dist (a
notebook, a warm test process), a value equal to torch's own default counts as not set.

What makes a warm cache warm end to end: Inductor's cache holds the compiled code, and AOTAutograd's
cache the traced forward (a bf16 step's autocast region is marked cacheable, private_apis); a new
process then only re-runs Dynamo's trace of one step (about a second at 256²).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache(setting: str, run_dir: str | Path | None) -> str:
    """Point torch.compile's caches per `setting` (before the process compiles anything) and say
    where, for the start line. run_dir None (an exported model evaluated on its own): auto falls
    back to the environment or torch's default."""
    if setting == "off":
        return "compile cache: torch's per-machine default (perf.compile_cache=off)"
    chosen = operator_cache_dir()
    if setting == "auto" and chosen:
        os.environ[ENV] = chosen
        return f"compile cache: {chosen} ({ENV})"
    if setting == "auto" and run_dir is None:
        return "compile cache: torch's per-machine default (no run directory)"
    folder = Path(run_dir) / "compile_cache" if setting == "auto" else Path(setting).expanduser()
    # One sub-folder per local rank: torch's CPU code cache writes a kernel's .so in place, so
    # processes compiling the same kernel into one folder at once can load a half-written file
    # (seen: "ImportError: … .so: file too short", then the eager fallback). Ranks of a first run
    # compile concurrently anyway; a restart, the next array task or an evaluation reads its rank's.
    rank = os.environ.get("LOCAL_RANK") or os.environ.get("RANK") or "0"
    os.environ[ENV] = str((folder / f"rank{rank}").resolve())  # read by Inductor at each cache access
    from .. import private_apis

    private_apis.keep_precompiled_headers_in(os.environ[ENV])  # CPU kernels' header: with the rest
    return f"compile cache: {os.environ[ENV]}"


def operator_cache_dir() -> str | None:
    """TORCHINDUCTOR_CACHE_DIR if the operator set it (not torch's import-time default), else None."""
    import lfbm_dist

    if lfbm_dist.COMPILE_CACHE_AT_START is not None:  # read before torch's compiler was imported
        return lfbm_dist.COMPILE_CACHE_AT_START or None
    value = os.environ.get(ENV)
    if not value:
        return None
    from .. import private_apis

    return None if os.path.abspath(value) == private_apis.inductor_default_cache_dir() else value
