"""All-reduce time of the LFBM gradient (generator + prior parameters of a named config). Prints JSON.

    torchrun --nproc_per_node 2 benchmarks/bench_allreduce.py --config celebahq256 [--repeats 5]

Uses the backend the machine has (NCCL on GPUs, gloo on CPU) and a float32 buffer of exactly the
model's parameter count, i.e. what DDP reduces per optimizer step. Reports the median time and the
ring-all-reduce bus bandwidth 2(N−1)/N · bytes / time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as torch_dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfbm_dist.config import load_config  # noqa: E402
from lfbm_dist.training.build import build_model, count_parameters  # noqa: E402
from lfbm_dist.training.engine.launch import join_process_group  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="celebahq256")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    join_process_group("nccl" if cuda else "gloo", timedelta(minutes=5))  # the trainer's own (see there)
    rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    cfg = load_config(ROOT / "configs" / f"{args.config}.yaml")
    params = count_parameters(build_model(cfg))
    buf = torch.ones(params, device=device)
    times = []
    for i in range(args.repeats + 1):
        torch_dist.barrier()
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch_dist.all_reduce(buf)
        if cuda:
            torch.cuda.synchronize(device)  # timing boundary
        if i:
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    nbytes = params * 4
    if rank == 0:
        print(
            json.dumps(
                {
                    "benchmark": "gradient_allreduce",
                    "config": args.config,
                    "parameters": params,
                    "bytes": nbytes,
                    "world_size": world,
                    "backend": torch_dist.get_backend(),
                    "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                    "median_s": seconds,  # full precision: the bandwidth below must agree with it on any machine
                    "bus_bandwidth_GBps": 2 * (world - 1) / world * nbytes / seconds / 1e9,
                },
                indent=2,
            )
        )
    # Every rank past its last all_reduce before any tears gloo down (as Engine.end does).
    torch_dist.barrier()
    torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
