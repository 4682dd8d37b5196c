"""Compile time and speed of the ways a Langevin chain can be compiled. Prints JSON.

    python benchmarks/bench_chain_compile.py --config quickstart --batch 50 --steps 2,4,8,16,32
    python benchmarks/bench_chain_compile.py --config celebahq256 --batch 64 --chain-steps 60 \
        --variants cudagraph_one_step,graph:20,graph:60 --jsonl rows.jsonl

Variants (in the order given; each row is appended to --jsonl as soon as it is measured):
  graph:N             the product's form: lfbm_dist.inference's ChainRunner, the chain as graphs of N steps
                      of `posterior_chain` (CUDA graphs on CUDA, perf.compile_mode=auto)
  cudagraph_one_step  `posterior_chain` compiled for ONE step (Inductor, no CUDA graphs of its
                      own) and the whole K-step chain captured around it as one torch.cuda.CUDAGraph —
                      the compile cost of one step, one replay per chain. The candidate the first GPU
                      measurement weighs against graph:20 and graph:60 (issue: GPU path, point 6). On
                      CPU the compiled step runs K times uncaptured (the math check; no capture there).
--steps K1,K2 (the compile-time curve) = variants graph:K1,graph:K2 with chains of K steps each.
Each variant: a fresh torch.compile (Dynamo reset), the first call timed (tracing + Inductor + kernel
builds + capture), then the median of 3 further calls → images per second of a K-step chain, and the
largest difference from the same chains run by the eager step loop.
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

from lfbm_dist.config import load_config  # noqa: E402
from lfbm_dist.inference import EAGER, GRAPHS, ChainRunner, langevin_posterior  # noqa: E402
from lfbm_dist.inference.langevin import frozen, posterior_chain  # noqa: E402
from lfbm_dist.training.build import build_model  # noqa: E402
from lfbm_dist.training.fastpath import FastPath  # noqa: E402


class OneStepCudaGraph:
    """A K-step chain as one torch.cuda.CUDAGraph around a compiled single step. Static buffers: the
    images, the starting latents and the noise (K, B, 1, nz: step k's slice is contiguous, so every
    step meets the one compiled graph); a replay runs all K steps with no host work in between."""

    def __init__(self, model, x: torch.Tensor, num_steps: int, step_size: float, sigma: float, dtype):
        self.step = torch.compile(posterior_chain, mode="default", dynamic=False, fullgraph=True)
        self.model, self.x, self.args = model, x, (step_size, sigma, None, dtype)
        batch, nz = x.shape[0], model.generator.nz
        self.z_in = torch.zeros(batch, nz, device=x.device)
        self.noise = torch.zeros(num_steps, batch, 1, nz, device=x.device)
        self.graph = None
        if x.device.type != "cuda":  # CPU (the smoke run): the compiled step, K calls, no capture
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and warm up off the capture stream, as CUDA graphs require
            for _ in range(2):
                self._chain()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.z_out = self._chain()

    def _chain(self) -> torch.Tensor:
        gen, prior = self.model.generator, self.model.prior
        z = self.z_in
        with torch.no_grad(), frozen(gen, prior):
            for noise in self.noise:
                z, _ = self.step(gen, prior, self.x, z, noise, 1, *self.args)
        return z

    def __call__(self, z_init: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.z_in.copy_(z_init)
        self.noise.copy_(noise.transpose(0, 1).unsqueeze(2))
        if self.graph is None:
            return self._chain()
        self.graph.replay()
        return self.z_out.clone()


def measure(variant: str, chain_steps: int, model, cfg, x, dtype, device) -> dict:
    nz = cfg.generator.nz
    graph_steps = int(variant.split(":")[1]) if variant.startswith("graph:") else 1
    k = chain_steps or graph_steps
    row = {"variant": variant, "graph_steps": graph_steps, "chain_steps": k}
    torch._dynamo.reset()
    noise = torch.randn(x.shape[0], k + 1, nz, device=device)
    # The same layout for every variant (channels-last, cuDNN autotuning on CUDA by default).
    fast = FastPath.resolve(cfg.perf.model_copy(update={"compile": "on", "graph_steps": graph_steps}), device)
    fast.apply(model)
    x = fast.images(x)
    started = time.perf_counter()

    def chain_with(runner):
        return langevin_posterior(
            model.generator, model.prior, x, num_steps=k, step_size=0.1, sigma=cfg.langevin.sigma,
            z_init=noise[:, 0], noise=noise[:, 1:], runner=runner,
        )  # fmt: skip

    if variant == "cudagraph_one_step":
        chain = OneStepCudaGraph(model, x, k, 0.1, cfg.langevin.sigma, dtype)

        def call():
            return chain(noise[:, 0], noise[:, 1:])
    else:
        runner = fast.runner(x.shape[0], dtype)

        def call():
            return chain_with(runner)

    def timed() -> float:
        begin = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # timing boundary
        return time.perf_counter() - begin

    first = (time.perf_counter() - started) + timed()
    run = statistics.median(timed() for _ in range(3))
    # The same chains by the eager step loop (with the variant's autocast): the variant's math check.
    reference = chain_with(EAGER if dtype is None else ChainRunner(autocast_dtype=dtype))
    return {
        **row,
        "status": "ok",
        "captured_as_one_cuda_graph": variant == "cudagraph_one_step" and device.type == "cuda",
        "max_abs_diff_vs_eager": float((call() - reference).abs().max()),
        "first_call_s": first,  # full precision: derived figures agree with raw ones on any machine
        "run_s": run,
        "images_per_sec": x.shape[0] / run,
        "compile_s_estimate": first - run,
        "fallback": GRAPHS.fallback_reason,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", default="", help="comma-separated K values: graph:K variants, chains of K steps")
    p.add_argument("--variants", default="", help="comma-separated graph:N / cudagraph_one_step")
    p.add_argument("--chain-steps", type=int, default=0, help="steps per chain (default: each graph's N)")
    p.add_argument("--jsonl", type=Path, help="append each row here as soon as it is measured")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v] + [f"graph:{k}" for k in args.steps.split(",") if k]
    for v in variants:
        if v != "cudagraph_one_step" and not (v.startswith("graph:") and v[6:].isdigit() and int(v[6:]) > 0):
            p.error(f"unknown variant {v!r}: use graph:N (N ≥ 1) or cudagraph_one_step")
    path = Path(args.config) if Path(args.config).is_file() else ROOT / "configs" / f"{args.config}.yaml"
    cfg = load_config(path, args.overrides)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    res = cfg.data.resolution
    x = torch.rand(args.batch, cfg.generator.image_channels, res, res, device=device) * 2 - 1
    dtype = torch.bfloat16 if device.type == "cuda" and cfg.train.precision == "bf16" else None
    rows = []
    for variant in variants or ["graph:2", "graph:4", "graph:8", "graph:16", "graph:32"]:
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
