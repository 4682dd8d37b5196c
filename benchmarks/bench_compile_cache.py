"""What compilation adds to a training process's start, cold and warm: time to the end of the first
training step and to exit, per variant and start. Prints one JSON line per measurement.

    python benchmarks/bench_compile_cache.py --config configs/celebahq256.yaml --out /tmp/cc
    python benchmarks/bench_compile_cache.py --config configs/celebahq256.yaml --out /tmp/cc0 \
        --variants graph_steps_20 --checkout /tmp/before   # a checkout of the design before (whole-chain graphs)

Every process is `lfbm_dist/train.py` of one training step (a logging tick and a checkpoint after it),
timed from its start to the first tick (`first_step_s`: imports, data, model, the Langevin graph's
compile or cache load, one step) and to its exit (`exit_s`: the checkpoint, the image grids, the end).
Each process gets a new empty TMPDIR, so torch's per-machine compile folder (/tmp/torchinductor_$USER)
is moved away every time, as on another node: only the sweep's cache (perf.compile_cache, shared by
the run and the next array task, as `lfbm-slurm sweep` sets it) can make a start warm. Starts:
    cold        a new run, an empty cache
    resume      the run resumed (train.resume=auto) after a process of it was SIGKILLed mid-run
                (preempted after its first step's checkpoint), with the sweep's cache as that left it
    next_task   another run (another seed, as the next point of a sweep array), the same cache
Variants: `default` (the preset's settings, perf.compile=on), `eager` (perf.compile=off), and
`graph_steps_N` (perf.graph_steps=N with the code of --checkout: the design this one replaced).
With no --shards, 180 real LFW faces (scikit-image's wheel) are written as shards at the preset's
resolution first. Run it on an otherwise idle machine; the numbers go in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = re.compile(r"^step (\d+) kimg")


def process(code: Path, run_dir: Path, seed: int, steps: int, args, variant: str, kill_after_tick=False) -> dict:
    """One training process to `steps` steps; times to its first logging tick and to its exit (or its
    SIGKILL once the tick's checkpoint is on disk, with kill_after_tick)."""
    step_kimg = args.batch / 1000
    config = Path(args.config).resolve()
    if config.is_relative_to(ROOT / "configs"):  # the other checkout's own preset (its settings' names)
        config = code / config.relative_to(ROOT)
    cmd = [
        sys.executable, str(code / "lfbm_dist" / "train.py"), "--config", str(config),
        f"data.shards=[{args.shards}]", "data.num_workers=1", f"perf.compile_cache={args.out / 'sweep_cache'}",
        f"train.run_dir={run_dir}", f"train.seed={seed}", f"train.batch_per_gpu={args.batch}",
        f"train.total_kimg={steps * step_kimg:g}", f"train.log_every_kimg={step_kimg:g}",
        f"train.snapshot_every_kimg={step_kimg:g}", "train.resume=auto", *_variant(variant), *args.overrides,
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
        env["TMPDIR"] = tmp  # torch's per-machine compile folder lives under it: a new, empty one
        if code != ROOT:  # the other checkout's lfbm_dist, not the one installed in the environment
            env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")])
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # fmt: skip
        first, lines = None, []
        try:
            for line in proc.stdout:
                lines.append(line)
                if first is None and TICK.search(line):
                    first = time.perf_counter() - started
                    if kill_after_tick:
                        _wait_for_checkpoint(run_dir, int(TICK.search(line).group(1)) * args.batch)
                        os.killpg(proc.pid, signal.SIGKILL)  # a preemption: no exit handlers
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        exit_s = time.perf_counter() - started
    if first is None or (rc != 0 and not kill_after_tick):
        raise RuntimeError(f"{variant}: training failed (rc {rc}):\n" + "".join(lines[-30:]))
    graphs = next((ln.strip() for ln in lines if "Langevin chain graphs compiled" in ln), None)
    return {"first_step_s": first, "exit_s": exit_s, "graphs": graphs}


def _variant(name: str) -> list[str]:
    if name == "eager":
        return ["perf.compile=off"]
    if name.startswith("graph_steps_"):
        return ["perf.compile=on", f"perf.graph_steps={int(name.rsplit('_', 1)[1])}"]
    return ["perf.compile=on"]


def _wait_for_checkpoint(run_dir: Path, images: int, timeout_s: float = 300) -> None:
    """Until a complete checkpoint of at least `images` is on disk (older ones may be pruned meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while _newest(run_dir) < images:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no checkpoint of {images} images in {run_dir} {timeout_s:.0f} s after its step")
        time.sleep(0.2)


def _newest(run_dir: Path) -> int:
    done = [int(c.name.split("-")[1]) for c in (run_dir / "checkpoints").glob("ckpt-*") if (c / "COMPLETE").is_file()]
    return max(done, default=-1)


def measure(variant: str, args) -> None:
    code = args.checkout if variant.startswith("graph_steps_") else ROOT
    run_a, run_b = args.out / variant / "a", args.out / variant / "b"
    if (args.out / "sweep_cache").exists():  # every variant starts with an empty sweep cache
        (args.out / "sweep_cache").rename(args.out / f"sweep_cache.{time.time_ns()}")
    emit(variant, "cold", process(code, run_a, 1, 1, args, variant))
    process(code, run_a, 1, 1000, args, variant, kill_after_tick=True)  # preempted after a step: prepares the resume
    steps_done = _newest(run_a) // args.batch
    emit(variant, "resume", process(code, run_a, 1, steps_done + 1, args, variant))  # one step more
    emit(variant, "next_task", process(code, run_b, 2, 1, args, variant))


def emit(variant: str, start: str, row: dict) -> None:
    print(json.dumps({"variant": variant, "start": start, **row}), flush=True)


def _lfw_shards(out: Path, resolution: int) -> Path:
    dest = out / f"lfw{resolution}"
    subprocess.run([sys.executable, "-m", "data_tools.build_shards", "demo", "--name", "lfw", "--out", str(dest),
                    "--resolution", str(resolution), "--samples-per-shard", "60"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return dest / "index.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="a new folder for the runs and caches")
    p.add_argument("--config", default=str(ROOT / "configs" / "celebahq256.yaml"))
    p.add_argument("--batch", type=int, default=2, help="train.batch_per_gpu (one rank)")
    p.add_argument("--variants", default="default,eager")
    p.add_argument("--checkout", type=Path, help="the code for graph_steps_N variants (the design before)")
    p.add_argument("--shards", help="index.json of the training shards (default: LFW faces at the preset's size)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.shards is None:
        sys.path.insert(0, str(ROOT))
        from lfbm_dist.config import load_config

        resolution = load_config(args.config, [o for o in args.overrides if not o.startswith("data.source")])
        args.shards = _lfw_shards(args.out, resolution.data.resolution)
    for variant in args.variants.split(","):
        if variant.startswith("graph_steps_") and args.checkout is None:
            p.error(f"{variant} needs --checkout (a checkout of the code that had perf.graph_steps)")
        measure(variant, args)


if __name__ == "__main__":
    main()
