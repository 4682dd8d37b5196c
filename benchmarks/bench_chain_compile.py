"""How the whole-chain graph's compile time grows with the steps it holds. Prints JSON.

    python benchmarks/bench_chain_compile.py --config quickstart --batch 50 --steps 2,4,8,16,32

For each K: a fresh torch.compile of lfbm_dist.inference.posterior_chain through the trainer's
ChainRunner (graph_steps = K, so the chain is one graph), the first call timed (tracing + Inductor +
kernel builds; kernels already built for a smaller K come from Inductor's cache, as they would in a
real run), then the median of 3 further calls. Run it on the device whose numbers you want.
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
from lfbm_dist.inference import GRAPHS, langevin_posterior  # noqa: E402
from lfbm_dist.training.build import build_model  # noqa: E402
from lfbm_dist.training.fastpath import FastPath  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", default="2,4,8,16,32", help="comma-separated K values")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    path = Path(args.config) if Path(args.config).is_file() else ROOT / "configs" / f"{args.config}.yaml"
    cfg = load_config(path, args.overrides)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    res, nz = cfg.data.resolution, cfg.generator.nz
    x = torch.rand(args.batch, cfg.generator.image_channels, res, res, device=device) * 2 - 1
    dtype = torch.bfloat16 if device.type == "cuda" and cfg.train.precision == "bf16" else None
    rows = []
    for k in (int(v) for v in args.steps.split(",")):
        torch._dynamo.reset()
        fast = FastPath.resolve(cfg.perf.model_copy(update={"compile": "on", "graph_steps": k}), device)
        fast.apply(model)
        noise = torch.randn(args.batch, k + 1, nz, device=device)

        runner = fast.runner(args.batch, dtype)

        def call(runner=runner, k=k, noise=noise):
            langevin_posterior(
                model.generator, model.prior, x, num_steps=k, step_size=0.1, sigma=cfg.langevin.sigma,
                z_init=noise[:, 0], noise=noise[:, 1:], runner=runner,
            )  # fmt: skip
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # timing boundary

        started = time.perf_counter()
        call()
        first = time.perf_counter() - started
        times = []
        for _ in range(3):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        run = statistics.median(times)
        rows.append({"steps": k, "first_call_s": round(first, 2), "run_s": round(run, 4),
                     "compile_s_estimate": round(first - run, 2), "fallback": GRAPHS.fallback_reason})  # fmt: skip
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {"benchmark": "chain_compile", "config": path.stem, "batch": args.batch, "device": device_name,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
