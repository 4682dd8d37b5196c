"""The CUDA kernels of a preset, built on a machine without a GPU: Inductor generates, and Triton
compiles for sm_90 (cubins, nothing launched), every kernel of every Langevin graph that the preset's
training and evaluation compile on CUDA. Prints one JSON line per graph.

    python benchmarks/cuda_codegen.py --config configs/celebahq256.yaml [--out DIR] [key=value ...]

Graphs (one Langevin step each — the compiled unit — per signature the CUDA run meets):
    train        the training chains: the step's chain batch, train.precision's autocast, the
                 occlusion mask if the data has one; the image grids' chains run as these do
    eval         test-time chains without a mask (reconstruction, aggregated posterior)
    eval_mask    test-time chains with a mask (inpainting, learning from occluded data)
    eval_nonoise noise-free test-time chains (anomaly scores)
How: Dynamo traces `posterior_step` on CPU exactly as the product calls it (channels-last images and
weights, the CUDA fast path's layout); AOTAutograd gives the inference ATen graph (traced on CPU, so
CPU autocast rules decide the casts); every device argument is swapped to CUDA and the graph re-traced
on fake CUDA tensors; Inductor lowers it for an H100 (lfbm_dist.private_apis.absent_gpu: its device
properties, a stand-in Triton driver) and Triton compiles every kernel and autotuning config to a
cubin with its bundled ptxas. Each line: graph, kernels (Triton kernels in Inductor's code), cubins,
cudagraph_disable_reason (Inductor's reason not to run the graph as a CUDA graph; must be null),
seconds (lowering + Triton compile, one thread), trace_s (Dynamo + AOTAutograd on CPU).
What this proves and what it does not: docs/PERFORMANCE.md ("CUDA kernels without a GPU").
If a torch upgrade moved an internal this relies on, it exits 3 with one line naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfbm_dist import private_apis  # noqa: E402
from lfbm_dist.config import load_config  # noqa: E402
from lfbm_dist.inference.langevin import frozen, posterior_step  # noqa: E402
from lfbm_dist.training.build import build_model  # noqa: E402
from lfbm_dist.training.fastpath import FastPath, chain_bytes_per_sample  # noqa: E402

# torch.cuda.get_device_properties of an H100 SXM (80 GB HBM3), as torch reports it.
H100 = types.SimpleNamespace(
    name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132, total_memory=85_520_809_984,
    warp_size=32, max_threads_per_multi_processor=2048, max_threads_per_block=1024, regs_per_multiprocessor=65536,
    shared_memory_per_block=49152, shared_memory_per_block_optin=232448, shared_memory_per_multiprocessor=233472,
    L2_cache_size=52_428_800, clock_rate=1_980_000, memory_clock_rate=2_619_000, memory_bus_width=5120,
    is_integrated=False, is_multi_gpu_board=False, gcnArchName="NVIDIA H100 80GB HBM3", uuid="stand-in",
)  # fmt: skip


class _Captured(Exception):
    """Raised by the capturing backend: the graph is kept, the step is never run on CPU."""


def graphs(cfg) -> dict[str, dict]:
    """The step signatures a CUDA run of this config compiles (see the module docstring)."""
    fast = FastPath.resolve(cfg.perf, torch.device("cuda", 0))
    t, d, e = cfg.train, cfg.data, cfg.eval
    train_autocast = torch.bfloat16 if t.precision == "bf16" else None
    step_batch = fast.chain_batch_setting or t.batch_per_gpu * t.accumulation_steps  # auto: the whole step
    eval_batch = fast.chain_batch_setting or e.fid_batch
    eval_autocast = FastPath.test_time_autocast(cfg)
    return {
        "train": dict(batch=step_batch, mask=d.occlusion != "none", noise=True, autocast=train_autocast,
                      used_by=["training chains", "image grids"]),
        "eval": dict(batch=eval_batch, mask=False, noise=True, autocast=eval_autocast,
                     used_by=["reconstruction", "aggregated posterior"]),
        "eval_mask": dict(batch=eval_batch, mask=True, noise=True, autocast=eval_autocast,
                          used_by=["inpainting", "learning from occluded data"]),
        "eval_nonoise": dict(batch=eval_batch, mask=False, noise=False, autocast=eval_autocast,
                             used_by=["anomaly scores"]),
    }  # fmt: skip


def dynamo_graph(model, cfg, spec: dict):
    """Dynamo's graph of `posterior_step` for this signature, traced on CPU in the CUDA layout."""
    res, nz, batch = cfg.data.resolution, cfg.generator.nz, spec["batch"]
    x = torch.zeros(batch, cfg.generator.image_channels, res, res).contiguous(memory_format=torch.channels_last)
    mask = torch.ones(batch, 1, res, res).contiguous(memory_format=torch.channels_last) if spec["mask"] else None
    z, eps = torch.zeros(batch, nz), torch.zeros(batch, nz) if spec["noise"] else None
    kept = {}

    def capture(gm, example_inputs):
        kept["gm"], kept["inputs"] = gm, example_inputs
        raise _Captured

    torch._dynamo.reset()
    fn = torch.compile(posterior_step, backend=capture, fullgraph=True, dynamic=False)
    lv = cfg.langevin
    with frozen(model.generator, model.prior), torch.no_grad():
        try:
            fn(model.generator, model.prior, x, z, eps, lv.step_size, lv.sigma, mask, spec["autocast"])
        except Exception:  # noqa: BLE001 — Dynamo wraps _Captured; anything else leaves no graph
            if "gm" not in kept:
                raise
    return kept["gm"], kept["inputs"]


def build(name: str, spec: dict, model, cfg, out: Path) -> dict:
    started = time.perf_counter()
    gm, inputs = private_apis.aten_inference_graph(*dynamo_graph(model, cfg, spec))
    gm, fake_inputs, fake_mode = private_apis.moved_to_cuda(gm, inputs)
    traced = time.perf_counter()
    before = set(out.rglob("*.cubin"))  # Inductor gives each fresh compile its own Triton cache under out
    with private_apis.absent_gpu(H100):
        source, reason, peak_bytes = private_apis.lower_for_cuda(gm, fake_inputs, fake_mode)
    return {
        "graph": name,
        "used_by": spec["used_by"],
        "batch": spec["batch"],
        "autocast": str(spec["autocast"]).replace("torch.", "") if spec["autocast"] else None,
        "mask": spec["mask"],
        "noise": spec["noise"],
        "kernels": source.count("async_compile.triton("),
        "cubins": len(set(out.rglob("*.cubin")) - before),
        "cudagraph_disable_reason": reason,
        "plan_peak_bytes": peak_bytes,  # Inductor's buffer plan for the step (its memory planner's estimate)
        "plan_bytes_per_chain": peak_bytes // spec["batch"] if peak_bytes else None,
        "estimate_bytes_per_chain": chain_bytes_per_sample(model.generator, cfg.generator.nz, spec["autocast"]),
        "seconds": time.perf_counter() - traced,
        "trace_s": traced - started,
        "target": f"sm_{H100.major}{H100.minor} ({H100.name})",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--out", type=Path, default=None, help="Inductor's code and the cubins (default: a new temp folder)")
    p.add_argument("--graphs", default="", help="comma-separated subset of: train, eval, eval_mask, eval_nonoise")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.out is None:
        import tempfile

        args.out = Path(tempfile.mkdtemp(prefix="cuda_codegen_"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.out / "inductor")  # read at each access
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    FastPath.resolve(cfg.perf, torch.device("cuda", 0)).apply(model)  # channels-last weights, as on CUDA
    wanted = [g for g in args.graphs.split(",") if g]
    try:
        for name, spec in graphs(cfg).items():
            if not wanted or name in wanted:
                print(json.dumps(build(name, spec, model, cfg, args.out)), flush=True)
    except private_apis.LibraryChanged as exc:
        print(f"cuda_codegen: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
