"""Training time lost per snapshot, written in the foreground (train.snapshot_async=false: the step
waits for the write, as lfbm_dist did before) and in the background (the default). Prints JSON.

    python benchmarks/bench_snapshot.py [--config celebahq256] [--steps 12] [--every 4] [--out DIR]

One process, one model of the preset's size (its generator and flow prior, Adam state filled by a
first step), the real checkpoint writer (training/snapshots.py) through a single-process Engine.
A "step" is the learning step at --batch images (generator forward and backward in fp32, both Adam
updates): the part of training a snapshot competes with. Three phases of --steps steps each, in one
run: none (no snapshot: the reference step time), foreground and background (a snapshot every
--every steps, never after the last step: training goes on after a snapshot).
Lost per snapshot = (phase wall time − steps × the reference median step) / snapshots; the time
spent inside the save call (what blocks the training thread) is reported beside it, and the
background phase ends by waiting for its last write, counted in its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfbm_dist import state_schema as schema  # noqa: E402
from lfbm_dist.config import load_config  # noqa: E402
from lfbm_dist.training.build import build_model, build_optimizer  # noqa: E402
from lfbm_dist.training.engine import Engine  # noqa: E402
from lfbm_dist.training.snapshots import Snapshots  # noqa: E402


def _step(model, optimizer, x, z) -> float:
    t0 = time.perf_counter()
    loss, _ = model(x, z)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _phase(name, engine, plain, optimizer, x, z, steps, every, run_dir, reference_s):
    cfg = load_config(
        ROOT / "configs" / f"{ARGS.config}.yaml",
        [f"train.run_dir={run_dir}", f"train.snapshot_async={'true' if name == 'background' else 'false'}"],
    )
    snapshots = Snapshots(engine, cfg)
    step_s, save_s, saves = [], [], 0
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        step_s.append(_step(plain, optimizer, x, z))
        if name != "none" and i % every == 0 and i < steps:  # steps follow every snapshot, as in a run
            s0 = time.perf_counter()
            snapshots.save(plain, {schema.IMAGES_SEEN: i * len(x), schema.STEPS_DONE: i}, {}, final=False)
            save_s.append(time.perf_counter() - s0)
            saves += 1
    w0 = time.perf_counter()
    snapshots.wait()
    final_wait_s = time.perf_counter() - w0
    wall = time.perf_counter() - t0
    out = {"wall_s": round(wall, 3), "median_step_s": round(statistics.median(step_s), 3), "snapshots": saves}
    if saves:
        out["lost_per_snapshot_s"] = round((wall - steps * reference_s) / saves, 3)
        out["blocking_save_call_s"] = round(statistics.median(save_s), 3)
        out["final_wait_s"] = round(final_wait_s, 3)
    return out


def main() -> None:
    torch.set_num_threads(ARGS.threads or torch.get_num_threads())
    cfg = load_config(ROOT / "configs" / f"{ARGS.config}.yaml", ["train.precision=fp32"])
    engine = Engine(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    wrapped, optimizer = engine.prepare(model, build_optimizer(cfg, model))
    plain = engine.unwrap(wrapped)
    res = cfg.data.resolution
    x = torch.rand(ARGS.batch, cfg.generator.image_channels, res, res) * 2 - 1
    z = torch.randn(ARGS.batch, cfg.generator.nz)
    _step(plain, optimizer, x, z)  # warm-up, and Adam's moments exist (they are half the state)
    state_bytes = sum(t.numel() * t.element_size() for t in engine.full_state(plain).values())
    root = Path(ARGS.out or tempfile.mkdtemp(prefix="bench_snapshot_"))
    phases = {}
    reference = _phase("none", engine, plain, optimizer, x, z, ARGS.steps, ARGS.every, root / "none", 0.0)
    phases["none"] = reference
    for name in ("foreground", "background"):
        phases[name] = _phase(
            name, engine, plain, optimizer, x, z, ARGS.steps, ARGS.every, root / name, reference["median_step_s"]
        )
    if not ARGS.out:
        shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "snapshot",
                "config": ARGS.config,
                "state_bytes": state_bytes,
                "parameters": sum(p.numel() for p in plain.parameters()),
                "batch": ARGS.batch,
                "steps_per_phase": ARGS.steps,
                "snapshot_every_steps": ARGS.every,
                "phases": phases,
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "disk": str(root),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="celebahq256")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", help="keep the snapshots here (default: a temporary folder, removed)")
    ARGS = p.parse_args()
    main()
