"""Time to the first training step with compile on: a cold start, a resume after SIGKILL and the next
array task, with and without the persistent compile cache (lfbm_dist/training/compile_cache.py). Prints JSON.

    python benchmarks/bench_compile_cache.py --out /tmp/cc [--config test_tiny] [--graph-steps 2] [overrides]

Each measurement is one `lfbm_dist/train.py` process, timed from its start to the first logging tick
(step 1 done: imports, data, model, the chain graph's compile or cache load, one step); the process is
then SIGKILLed, as a preemption would. In order:
    cold          a new run, an empty cache folder
    resume        the same run resumed (train.resume=auto) after its SIGKILL, the cache as left
    array_task    another run (another seed, as a sweep point) sharing the cache folder
    resume_nocache the same resume with an empty cache folder: what the cache saves a requeue
Run it on an otherwise idle machine; the numbers go in docs/PERFORMANCE.md with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = re.compile(r"step (\d+) kimg")


def first_step(run_dir: Path, cache: Path, seed: int, args, resume: bool) -> dict:
    """One training process up to its first logging tick, then SIGKILL. A checkpoint is written at
    every step (snapshot_every_kimg = one global batch), so a resume finds the one before the kill."""
    step_kimg = args.batch / 1000
    cmd = [
        sys.executable, str(ROOT / "lfbm_dist" / "train.py"), "--config", args.config,
        "perf.compile=on", f"perf.graph_steps={args.graph_steps}", f"perf.compile_cache={cache}",
        f"train.run_dir={run_dir}", f"train.seed={seed}", f"train.batch_per_gpu={args.batch}",
        f"train.total_kimg={step_kimg * 1000:g}", f"train.log_every_kimg={step_kimg}",  # 1000 steps: never ends
        f"train.snapshot_every_kimg={step_kimg}", *args.overrides,
    ]  # fmt: skip
    if resume:
        cmd.append("train.resume=auto")
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if TICK.search(line):
                elapsed = time.perf_counter() - started
                # The tick is logged before the step's snapshot: let the snapshot land, then kill.
                _wait_for_checkpoint(run_dir, int(TICK.search(line).group(1)), timeout_s=120)
                return {"first_step_s": round(elapsed, 2), "cache_entries": _entries(cache)}
        raise RuntimeError("training ended without a logging tick:\n" + "".join(lines[-30:]))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # a preemption: no exit handlers, no final checkpoint
        proc.wait()


def _wait_for_checkpoint(run_dir: Path, step: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any((p / "trainer_state.json").is_file() for p in (run_dir / "checkpoints").glob("*")):
            return
        time.sleep(0.2)
    raise RuntimeError(f"no checkpoint in {run_dir} {timeout_s:.0f} s after step {step}")


def _entries(cache: Path) -> int:
    return sum(1 for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a new folder for the runs and caches")
    p.add_argument("--config", default=str(ROOT / "configs" / "test_tiny.yaml"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--graph-steps", type=int, default=2, help="steps per chain graph (compile time grows with it)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    shared, empty = out / "compile_cache", out / "empty_cache"
    rows = {
        "cold": first_step(out / "sweep" / "a", shared, 1, args, resume=False),
        "resume": first_step(out / "sweep" / "a", shared, 1, args, resume=True),
        "array_task": first_step(out / "sweep" / "b", shared, 2, args, resume=False),
        "resume_nocache": first_step(out / "sweep" / "a", empty, 1, args, resume=True),
    }
    import torch

    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                "torch": torch.__version__,
                "config": args.config,
                "graph_steps": args.graph_steps,
                "batch": args.batch,
                "time_to_first_step_s": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
