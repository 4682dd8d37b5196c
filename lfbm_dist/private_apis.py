"""The one seam to library internals that have no public form (torch's compiler counters and settings,
the DataLoader's worker shutdown; DeepSpeed's optimizer-state relink stays beside the ZeRO code in
training/engine/zero.py, the one place that wraps DeepSpeed). Everything else in lfbm_dist uses
public APIs; what is here is read defensively, checked against the versions it was written for, and
fails with one line naming the library if it changes. Tested with torch 2.11 and 2.13 (CI), the GPU
machines' and the lock file's versions.
"""

from __future__ import annotations

import contextlib

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


def thread_frames() -> dict:
    """Every thread's current Python frame by thread id (the hang watchdog's stack dump): CPython's
    documented sys._current_frames, underscored as an implementation detail of CPython."""
    import sys

    frames = getattr(sys, "_current_frames", None)
    if frames is None:
        raise LibraryChanged(f"this Python ({sys.implementation.name}) has no sys._current_frames")
    return frames()


def mode_records_cuda_graphs(mode: str) -> bool:
    """Whether a torch.compile mode records CUDA graphs of its own (CUDA-graph trees: reduce-overhead
    and max-autotune), read from Inductor's own table of what each mode switches on."""
    try:
        from torch._inductor import list_mode_options
    except ImportError as exc:
        raise _changed("torch._inductor.list_mode_options") from exc
    import torch._inductor.config as inductor_config

    return bool(list_mode_options(mode).get("triton.cudagraphs", inductor_config.triton.cudagraphs))


# The autocast region's entry and exit, as Dynamo writes them into a graph (the generator's bf16
# autocast; the flow prior's float32 region inside it).
_AUTOCAST_FUNCTIONS = ("torch.amp.autocast_mode._enter_autocast", "torch.amp.autocast_mode._exit_autocast")


def cache_graphs_with_autocast() -> None:
    """Let torch's AOTAutograd cache keep graphs that contain an autocast region. It refuses any graph
    with a function it has not vetted, and autocast's entry and exit are not vetted, so every process
    re-ran Dynamo's and AOTAutograd's work for a bf16 Langevin step although Inductor's cache held its
    code. Marking them is safe: their arguments (device, dtype, enabled) are in the graph's code, which
    the cache key hashes, so a graph with another autocast setting is another entry. The value is the
    torch version (what torch's own example keys by)."""
    import torch._inductor.config as inductor_config

    marked = getattr(inductor_config, "unsafe_marked_cacheable_functions", None)
    if not isinstance(marked, dict):
        raise _changed("torch._inductor.config.unsafe_marked_cacheable_functions")
    for name in _AUTOCAST_FUNCTIONS:
        marked.setdefault(name, torch.__version__)


def compiler_error_types() -> tuple[type[BaseException], ...]:
    """What torch.compile raises when it cannot build a graph (Dynamo's and Inductor's errors, a C++
    compile failure on CPU), as opposed to an error while the built code runs."""
    try:
        from torch._dynamo.exc import TorchDynamoException
        from torch._inductor.exc import CppCompileError
    except ImportError as exc:
        raise _changed("torch._dynamo.exc.TorchDynamoException / torch._inductor.exc.CppCompileError") from exc
    return (TorchDynamoException, CppCompileError)


def inductor_default_cache_dir() -> str:
    """torch's per-machine compile cache folder (what importing torch._dynamo sets TORCHINDUCTOR_CACHE_DIR
    to when it is unset): /tmp/torchinductor_$USER."""
    import os

    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError as exc:
        raise _changed("torch._inductor.runtime.cache_dir_utils.default_cache_dir") from exc
    return os.path.abspath(default_cache_dir())


def keep_precompiled_headers_in(folder: str) -> None:
    """Inductor's CPU backend precompiles its kernels' common header (≈ 6 s of g++ per process on a
    2-core VM) into torch's per-machine folder, fixed at import from /tmp — not into
    TORCHINDUCTOR_CACHE_DIR — so on a new node (or with /tmp cleared) every warm start paid it again.
    Point it into the run's compile cache, where the rest of the compiled code lives. The header's
    file name hashes the compiler, its flags and the preprocessed header, so a mismatch is a miss."""
    import os

    try:
        import torch._inductor.codecache as codecache
    except ImportError as exc:
        raise _changed("torch._inductor.codecache") from exc
    if not hasattr(codecache, "_HEADER_DIR") or not hasattr(codecache, "_HEADER_LOCK_DIR"):
        raise _changed("torch._inductor.codecache._HEADER_DIR")
    codecache._HEADER_DIR = os.path.join(folder, "precompiled_headers")
    codecache._HEADER_LOCK_DIR = os.path.join(codecache._HEADER_DIR, "locks")


# ---------------------------------------------------------------------- CUDA kernels without a GPU
# benchmarks/cuda_codegen.py makes Inductor generate, and Triton compile (cubins, nothing launched),
# the CUDA kernels of the Langevin step on a machine with no GPU. Everything torch and Triton ask of
# a device is answered here, from the properties given; nothing else in lfbm_dist does this.


def aten_inference_graph(gm, example_inputs):
    """AOTAutograd's inference ATen graph of a Dynamo graph (functionalized, Inductor's decompositions,
    autocast applied — by the tracing device's rules), traced on fake copies of the inputs."""
    try:
        from torch._functorch.aot_autograd import aot_module_simplified
        from torch._inductor.decomposition import select_decomp_table
    except ImportError as exc:
        raise _changed("aot_module_simplified / select_decomp_table") from exc
    out = {}

    def grab(fw, inputs):
        out["gm"], out["inputs"] = fw, inputs
        return fw.forward

    with torch.no_grad():
        aot_module_simplified(gm, list(example_inputs), fw_compiler=grab, decompositions=select_decomp_table())
    return out["gm"], out["inputs"]


def _to_cuda(value):
    if isinstance(value, torch.device) and value.type == "cpu":
        return torch.device("cuda", 0)
    if isinstance(value, str) and value == "cpu":
        return "cuda"
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cuda(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cuda(v) for k, v in value.items()}
    return value


def moved_to_cuda(gm, example_inputs):
    """The same ATen graph on CUDA: every device argument swapped, and its tensors re-traced as fake
    CUDA tensors of the same shapes, strides and dtypes. Returns (graph, fake inputs, fake mode)."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.passes.fake_tensor_prop import FakeTensorProp
    except ImportError as exc:
        raise _changed("FakeTensorMode / FakeTensorProp") from exc
    for node in gm.graph.nodes:
        node.args, node.kwargs = _to_cuda(node.args), _to_cuda(node.kwargs)
    gm.recompile()
    mode = FakeTensorMode()
    with mode:
        inputs = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda") for t in example_inputs]
    FakeTensorProp(gm, mode=mode).propagate_dont_convert_inputs(*inputs)
    return gm, inputs, mode


def lower_for_cuda(gm, fake_inputs, fake_mode) -> tuple[str, str | None, int | None]:
    """Inductor on the CUDA graph (call inside `absent_gpu`): generates the Triton kernels and compiles
    each (every autotuning config) to a cubin. Returns (Inductor's wrapper source, the reason it would
    not run the graph as a CUDA graph — None when it would, the peak bytes of its buffer plan: the
    lowest of the orders Inductor's memory planner weighed, as it logs them)."""
    import logging
    import re

    try:
        from torch._inductor.compile_fx import compile_fx_inner
        from torch._inductor.utils import BoxedBool
    except ImportError as exc:
        raise _changed("torch._inductor.compile_fx.compile_fx_inner") from exc
    peaks: list[int] = []

    class Peaks(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.search(r"peak memory: (\d+)", record.getMessage())
            if found:
                peaks.append(int(found.group(1)))

    planner, handler = logging.getLogger("torch._inductor.memory"), Peaks()
    level = planner.level
    planner.addHandler(handler)
    planner.setLevel(logging.INFO)
    try:
        with fake_mode:
            compiled = compile_fx_inner(gm, fake_inputs, cudagraphs=BoxedBool(True), is_inference=True)
    finally:
        planner.removeHandler(handler)
        planner.setLevel(level)
    return compiled.source_code, compiled.disabled_cudagraphs_reason, min(peaks) if peaks else None


def _stand_in_driver(target_arch: int, props):
    """A Triton driver that compiles for `target_arch` and launches nothing (a subclass of Triton's CUDA
    driver, so Inductor's 'is the GPU driver active' checks accept it, without loading libcuda)."""
    import types

    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver, ty_to_cpp

    class NoLaunch:
        def __init__(self, src, metadata):
            self.src, self.metadata = src, metadata
            self.launch_cooperative_grid = self.launch_pdl = False

        def __call__(self, *args, **kwargs):
            raise RuntimeError("a stand-in Triton driver compiles kernels; it launches none")

    class StandIn(CudaDriver):
        def __init__(self):  # no super().__init__(): it would load libcuda
            self.get_current_stream = lambda device=None: 0
            self.get_current_device = lambda: 0
            self.set_current_device = lambda device: None
            self.get_device_capability = lambda device=None: (props.major, props.minor)
            info = {
                "max_shared_mem": props.shared_memory_per_block_optin,
                "max_num_regs": props.regs_per_multiprocessor,
                "multiprocessor_count": props.multi_processor_count,
                "warpSize": props.warp_size,
                "sm_clock_rate": props.clock_rate,
                "mem_clock_rate": props.memory_clock_rate,
                "mem_bus_width": props.memory_bus_width,
            }
            self.utils = types.SimpleNamespace(
                get_device_properties=lambda device: info,
                load_binary=lambda *args: (0, 0, 32, 0, props.max_threads_per_block),  # module, function, regs, …
            )
            self.launcher_cls = NoLaunch

        def get_current_target(self):
            return GPUTarget("cuda", target_arch, props.warp_size)

        def map_python_to_cpp_type(self, ty: str) -> str:
            return ty_to_cpp(ty)

        def get_benchmarker(self):
            raise RuntimeError("a stand-in Triton driver benchmarks nothing")

    return StandIn()


@contextlib.contextmanager
def absent_gpu(props):
    """Inside: torch and Triton see one CUDA device with these properties (a SimpleNamespace shaped like
    torch.cuda.get_device_properties' answer) and Triton compiles for it; nothing can run on it.
    Inductor compiles in this process (no workers: they would not see the stand-in) and keeps its
    own launcher off (it loads each cubin with libcuda)."""
    try:
        import torch._inductor.config as inductor_config
        import torch.utils._triton as torch_triton
        from torch._dynamo.device_interface import CudaInterface
        from triton.runtime import driver
    except ImportError as exc:
        raise _changed("torch._dynamo.device_interface.CudaInterface / triton.runtime.driver") from exc
    capability = (props.major, props.minor)
    answers = {"is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
               "get_device_capability": lambda d=None: capability, "get_device_properties": lambda d=None: props,
               "get_device_name": lambda d=None: props.name, "set_device": lambda d: None,
               "synchronize": lambda d=None: None, "_lazy_init": lambda: None, "is_initialized": lambda: True,
               "_exchange_device": lambda d: 0, "_maybe_exchange_device": lambda d: 0,
               "get_rng_state": lambda d="cuda": torch.zeros(16, dtype=torch.uint8),
               "set_rng_state": lambda state, d="cuda": None}  # fmt: skip
    interface = {"current_device": lambda: 0, "set_device": lambda d: None, "device_count": lambda: 1,
                 "synchronize": lambda d=None: None, "get_device_properties": lambda d=None: props,
                 "get_raw_stream": lambda d=None: 0, "exchange_device": lambda d: 0,
                 "maybe_exchange_device": lambda d: 0, "memory_allocated": lambda d=None: 0,
                 "is_bf16_supported": lambda *a, **k: True}  # fmt: skip
    worker = {k: interface[k] for k in ("current_device", "set_device", "get_device_properties")}
    targets = [(torch.cuda, answers), (CudaInterface, interface), (CudaInterface.Worker, worker),
               (torch._C, {"_cuda_getCurrentRawStream": lambda d: 0})]  # fmt: skip
    saved = [(owner, name, owner.__dict__.get(name, getattr(owner, name, None))) for owner, table in targets
             for name in table]  # fmt: skip
    missing = [name for owner, table in targets for name in table if not hasattr(owner, name)]
    if missing:
        raise _changed(f"torch.cuda / CudaInterface attributes {missing}")
    for owner, table in targets:
        for name, answer in table.items():
            setattr(owner, name, staticmethod(answer) if isinstance(owner, type) else answer)
    caches = [getattr(torch_triton, n, None) for n in ("has_triton", "triton_backend")]
    caches = [c for c in caches if hasattr(c, "cache_clear")]
    for cached in caches:
        cached.cache_clear()  # answered before, for no GPU
    before = getattr(driver, "_active", None)  # None: made lazily (reset_active would make it now, for no GPU)
    driver.set_active(_stand_in_driver(props.major * 10 + props.minor, props))
    try:
        with inductor_config.patch(compile_threads=1, use_static_cuda_launcher=False, force_disable_caches=True,
                                   **{"triton.cudagraphs": True}):  # fmt: skip
            yield
    finally:
        driver._active = before
        for owner, name, value in saved:
            setattr(owner, name, value)
        for cached in caches:
            cached.cache_clear()
