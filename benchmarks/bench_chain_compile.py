"""Compile time and speed of the ways a Langevin chain can be compiled. Prints JSON.

    python benchmarks/bench_chain_compile.py --config celebahq256 --batch 64 --chain-steps 60 \
        --variants step,step_uncaptured,reduce-overhead --jsonl rows.jsonl
    python benchmarks/bench_chain_compile.py --config quickstart --batch 50 --variants step,unrolled:4,unrolled:16

Variants (in the order given; each row is appended to --jsonl as soon as it is measured):
  step              the product's form (lfbm_dist.inference's ChainRunner, perf defaults with compile
                    on): ONE compiled Langevin step, the K-step chain a loop over it — on CUDA captured
                    as one torch.cuda.CUDAGraph per chain (one replay, no host work between steps)
  step_uncaptured   the same compiled step, K calls from Python, no CUDA graph (perf.cuda_graphs=off):
                    what the capture is worth
  reduce-overhead   the same step compiled in mode reduce-overhead: a CUDA-graph-tree replay per step
  unrolled:N        the design before: N steps unrolled into one graph (benchmark-only), the chain as
                    ⌈K/N⌉ calls — compile time grows with N; kept to measure that against `step`
Each variant: a fresh torch.compile (Dynamo reset), the first call timed (tracing + Inductor + kernel
builds + capture), then the median of 3 further calls → images per second of a K-step chain, and the
largest difference from the same chains run by the eager step loop. `graphs` is torch's own count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfbm_dist import private_apis  # noqa: E402
from lfbm_dist.config import load_config  # noqa: E402
from lfbm_dist.inference import EAGER, GRAPHS, ChainRunner, langevin_posterior  # noqa: E402
from lfbm_dist.inference.langevin import frozen, posterior_step  # noqa: E402
from lfbm_dist.training.build import build_model  # noqa: E402
from lfbm_dist.training.fastpath import FastPath  # noqa: E402


def unrolled(n: int):
    """N steps of `posterior_step` as one compiled function (the whole-chain graphs this project
    compiled before one-step graphs): noise (N, B, nz)."""

    def steps(generator, prior, x, z, noise, step_size, sigma, mask, autocast_dtype):
        grad_norm = z.new_zeros(z.shape[0])
        for k in range(n):
            z, grad_norm = posterior_step(generator, prior, x, z, noise[k], step_size, sigma, mask, autocast_dtype)
        return z, grad_norm

    return torch.compile(steps, mode="default", dynamic=False, fullgraph=True)


def measure(variant: str, chain_steps: int, model, cfg, x, dtype, device) -> dict:
    nz, k = cfg.generator.nz, chain_steps
    row = {"variant": variant, "chain_steps": k}
    torch._dynamo.reset()
    GRAPHS.reset()
    noise = torch.randn(x.shape[0], k + 1, nz, device=device)
    # The same layout for every variant (channels-last, cuDNN autotuning on CUDA by default).
    perf = {"compile": "on"}
    if variant == "step_uncaptured":
        perf["cuda_graphs"] = "off"
    elif variant == "reduce-overhead":
        perf["compile_mode"] = "reduce-overhead"
    fast = FastPath.resolve(cfg.perf.model_copy(update=perf), device)
    fast.apply(model)
    x = fast.images(x)
    started, graphs_before = time.perf_counter(), private_apis.dynamo_counter("stats", "unique_graphs")

    def chain_with(runner):
        return langevin_posterior(
            model.generator, model.prior, x, num_steps=k, step_size=0.1, sigma=cfg.langevin.sigma,
            z_init=noise[:, 0], noise=noise[:, 1:], runner=runner,
        )  # fmt: skip

    if variant.startswith("unrolled:"):
        n = int(variant.split(":")[1])
        row["graph_steps"], fn = n, unrolled(n)

        def call():
            z, segments = noise[:, 0].contiguous(), noise[:, 1:].transpose(0, 1).contiguous()  # (K, B, nz)
            with torch.no_grad(), frozen(model.generator, model.prior):
                for start in range(0, k, n):  # a last, shorter segment: the eager loop (no new graph)
                    seg = segments[start : start + n]
                    if seg.shape[0] < n:
                        return _finish_eagerly(model, x, z, seg, cfg, dtype)
                    z, _ = fn(model.generator, model.prior, x, z, seg, 0.1, cfg.langevin.sigma, None, dtype)
            return z
    else:
        runner = fast.runner(x.shape[0], dtype)
        row["graph_steps"] = 1
        row["captured_as_one_cuda_graph"] = runner.capture and device.type == "cuda"

        def call():
            return chain_with(runner)

    def timed() -> float:
        begin = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # timing boundary
        return time.perf_counter() - begin

    first = (time.perf_counter() - started) + timed()
    row["graphs"] = private_apis.dynamo_counter("stats", "unique_graphs") - graphs_before
    run = statistics.median(timed() for _ in range(3))
    # The same chains by the eager step loop (with the variant's autocast): the variant's math check.
    reference = chain_with(EAGER if dtype is None else ChainRunner(autocast_dtype=dtype))
    return {
        **row,
        "status": "ok",
        "max_abs_diff_vs_eager": float((call() - reference).abs().max()),
        "first_call_s": first,  # full precision: derived figures agree with raw ones on any machine
        "run_s": run,
        "images_per_sec": x.shape[0] / run,
        "compile_s_estimate": first - run,
        "fallback": GRAPHS.fallback_reason,
    }


KNOWN = ("step", "step_uncaptured", "reduce-overhead")


def _finish_eagerly(model, x, z, noise_kbn, cfg, dtype):
    """The unrolled variant's remainder steps (K not a multiple of N) by the eager loop."""
    from lfbm_dist.inference import posterior_steps

    with frozen(model.generator, model.prior):
        z, _ = posterior_steps(model.generator, model.prior, x, z, noise_kbn.transpose(0, 1), noise_kbn.shape[0],
                               0.1, cfg.langevin.sigma, None, dtype)  # fmt: skip
    return z


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--variants", default="step", help="comma-separated: " + ", ".join(KNOWN) + ", unrolled:N")
    p.add_argument("--chain-steps", type=int, default=20, help="steps per chain")
    p.add_argument("--jsonl", type=Path, help="append each row here as soon as it is measured")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in KNOWN and not (v.startswith("unrolled:") and v[9:].isdigit() and int(v[9:]) > 0):
            p.error(f"unknown variant {v!r}: use {', '.join(KNOWN)} or unrolled:N (N ≥ 1)")
    path = Path(args.config) if Path(args.config).is_file() else ROOT / "configs" / f"{args.config}.yaml"
    cfg = load_config(path, args.overrides)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    res = cfg.data.resolution
    x = torch.rand(args.batch, cfg.generator.image_channels, res, res, device=device) * 2 - 1
    dtype = torch.bfloat16 if device.type == "cuda" and cfg.train.precision == "bf16" else None
    rows = []
    for variant in variants:
        rows.append(measure(variant, args.chain_steps, model, cfg, x, dtype, device))
        if args.jsonl is not None:
            with args.jsonl.open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {"benchmark": "chain_compile", "config": path.stem, "batch": args.batch, "device": device_name,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
