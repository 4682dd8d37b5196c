"""What weight averaging costs per training step (training/ema.py): the averages' memory and the time of
one update (after each optimizer step), for a preset's model on this device. Prints JSON.

    python benchmarks/bench_ema.py --config configs/celebahq256.yaml [--repeats 10]

The update is three lerps per parameter (the half-life EMA and the two power-function EMAs of the
defaults): it reads the weights and reads and writes each average, ≈ 7 × 4 bytes per parameter.
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
from lfbm_dist.training.build import build_model  # noqa: E402
from lfbm_dist.training.ema import WeightAverages  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    model = build_model(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    averages = WeightAverages(model, cfg.ema, cfg.train.batch_per_gpu)
    times = []
    for step in range(1, args.repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # timing boundary
        started = time.perf_counter()
        averages.update(model, step * cfg.train.batch_per_gpu, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # timing boundary
        if step > 1:
            times.append(time.perf_counter() - started)
    out = {
        "benchmark": "ema_update",
        "config": Path(args.config).stem,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "parameters": params,
        "averages": list(averages.kinds),
        "memory_bytes": sum(t.numel() * t.element_size() for ts in averages.kinds.values() for t in ts.values()),
        "update_s_median": statistics.median(times),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
