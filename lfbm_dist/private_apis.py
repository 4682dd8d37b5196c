"""The one seam to library internals that have no public form (torch's compiler counters and settings,
the DataLoader's worker shutdown; DeepSpeed's optimizer-state relink stays beside the ZeRO code in
training/engine/zero.py, the one place that wraps DeepSpeed). Everything else in lfbm_dist uses
public APIs; what is here is read defensively, checked against the versions it was written for, and
fails with one line naming the library if it changes. Tested with torch 2.11 and 2.13 (CI), the GPU
machines' and the lock file's versions.
"""

from __future__ import annotations

import torch

TESTED_TORCH = ((2, 11), (2, 13))


class LibraryChanged(RuntimeError):
    """A private API moved under us: one line naming the library, its version and what to do."""


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _changed(what: str) -> LibraryChanged:
    lo, hi = TESTED_TORCH
    return LibraryChanged(
        f"torch {torch.__version__} no longer has {what} (lfbm_dist was tested with torch "
        f"{lo[0]}.{lo[1]}–{hi[0]}.{hi[1]}); install a tested torch or update lfbm_dist/private_apis.py"
    )


def dynamo_counter(group: str, name: str) -> int:
    """One of torch.compile's own event counters (torch._dynamo.utils.counters), e.g.
    ("stats", "unique_graphs"): the graphs Dynamo captured in this process; ("inductor",
    "cudagraph_skips"): graphs Inductor declined to capture as CUDA graphs; ("inductor",
    "fxgraph_cache_hit"): graphs whose compiled code Inductor loaded from its cache."""
    try:
        from torch._dynamo.utils import counters
    except ImportError as exc:
        raise _changed("torch._dynamo.utils.counters") from exc
    return int(counters[group].get(name, 0))


def recompile_limit() -> int:
    """How many graphs Dynamo keeps for one function before it stops compiling it (under
    fullgraph=True it raises instead). Named cache_size_limit before torch 2.7."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            return int(getattr(dynamo_config, name))
    raise _changed("torch._dynamo.config.recompile_limit")


def inductor_freezing() -> bool:
    """Inductor's freezing (TORCHINDUCTOR_FREEZING=1 or set in code): under no_grad it bakes a module's
    parameters into the compiled graph as constants."""
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config, "freezing"):
        raise _changed("torch._inductor.config.freezing")
    return bool(inductor_config.freezing)


def stop_dataloader_workers(iterator) -> None:
    """End a DataLoader iterator's worker processes now, even one blocked in a stalled read. The
    DataLoader's own shutdown runs first (done event, a bounded join, SIGTERM: workers that are free
    exit cleanly, none is killed holding a queue lock); a worker still alive after it gets SIGKILL.
    An iterator without workers (num_workers=0) has nothing to stop."""
    if type(iterator).__name__ != "_MultiProcessingDataLoaderIter":
        return
    if not hasattr(iterator, "_shutdown_workers") or not hasattr(iterator, "_workers"):
        raise _changed("DataLoader's _MultiProcessingDataLoaderIter._shutdown_workers/_workers")
    workers = list(iterator._workers)
    iterator._shutdown_workers()
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)
