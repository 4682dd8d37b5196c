"""gpu_proof.py's resume section: a 256² training run from synthetic WebDataset shards, SIGKILLed after
its mid-run snapshot and resumed with train.resume=auto, against the same run uninterrupted.

The three processes share one compile cache (the second and third read the first's graphs, as a
requeued job does) and run deterministic kernels (perf.deterministic: cuDNN deterministic, no
autotuning, a fixed cuBLAS workspace). Weights are compared per tensor by relative L2 difference with
an absolute floor, so that near-zero tensors (zero-initialised layers) are judged by their absolute
difference instead of a ratio of tiny norms:
    ‖a − b‖ ≤ RTOL · max(‖a‖, FLOOR · √numel)
bitwise equality is reported beside it (expected on CPU, where the smoke run requires it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RTOL, FLOOR = 1e-4, 1e-3  # relative, and the per-element RMS below which a tensor counts as near zero


def _synthetic_shards(out: Path, resolution: int, count: int) -> Path:
    """Smooth random colour images (not noise: JPEG-like content) as WebDataset shards + index."""
    import numpy as np
    from PIL import Image

    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        low = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.uint8)
        Image.fromarray(low).resize((resolution, resolution), Image.BICUBIC).save(folder / f"{i:05d}.png")
    cmd = [sys.executable, "-m", "data_tools.build_shards", "folder", "--root", str(folder), "--out",
           str(out / "shards"), "--resolution", str(resolution), "--format", "jpg", "--samples-per-shard", "256",
           "--no-progress"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    return out / "shards" / "index.json"


def _train_cmd(args, index: Path, run_dir: Path, resume: str, cache: Path) -> list[str]:
    s = args.sizes
    return [
        sys.executable, "-m", "lfbm_dist.train", "--config", str(ROOT / "configs" / f"{args.config}.yaml"),
        "data.source=shards", f"data.shards=[{index}]", "data.num_workers=2", f"train.run_dir={run_dir}",
        f"train.batch_per_gpu={s['train_batch']}", f"train.total_kimg={s['train_steps'] * s['train_batch'] / 1000}",
        f"train.snapshot_every_kimg={s['train_steps'] * s['train_batch'] / 2000}", "train.log_every_kimg=1000",
        "train.image_every_kimg=0", "eval.fid_every_kimg=0", f"train.resume={resume}", "perf.deterministic=true",
        f"perf.compile_cache={cache}", *args.overrides,
    ]  # fmt: skip


def _run(cmd: list[str], ends: float, env: dict, log: Path, wait_for=None) -> tuple[int | None, str]:
    """A training process in its own group until it ends, `wait_for()` is true (then SIGKILL: a
    preemption) or the deadline (SIGKILL). (return code, None if killed; its output, in `log`)."""
    with (
        log.open("w") as out,
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True) as proc,
    ):
        while proc.poll() is None and time.monotonic() < ends and not (wait_for and wait_for()):
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # rank and DataLoader workers
            proc.wait()
            return None, log.read_text()
        return proc.returncode, log.read_text()


def _failed(which: str, rc: int | None) -> str:
    if rc is None:
        return f"incomplete: timed out: the {which} run was cut at the deadline (process group killed)"
    return f"failed: the {which} run ended with rc {rc}"


def resume(args, deadline_s: float, env: dict) -> dict:
    import shutil

    import torch

    from lfbm_dist.export import checkpoint_state_dict
    from lfbm_dist.training.checkpoint import latest, list_complete

    ends = time.monotonic() + deadline_s
    work = args.out / "resume"
    shutil.rmtree(work, ignore_errors=True)  # a fresh pair of runs every time
    s = args.sizes
    index = _synthetic_shards(work, s["resolution"], s["train_images"])
    cache = work / "compile_cache"
    result: dict = {"steps": s["train_steps"], "batch_per_gpu": s["train_batch"], "resolution": s["resolution"]}
    started = time.monotonic()
    rc, err = _run(
        _train_cmd(args, index, work / "uninterrupted", "none", cache), ends, env, work / "uninterrupted.log"
    )
    result["uninterrupted_s"] = round(time.monotonic() - started, 1)
    if rc != 0:
        return {**result, "status": _failed("uninterrupted", rc),
                "output_tail": err[-2000:]}  # fmt: skip
    killed = work / "killed"
    # Smoke steps take milliseconds: slow them (the test suite's own seam) so the kill lands mid-run.
    slow = dict(env, LFBM_FAULT_STEP_SLEEP="0.2") if args.smoke else env
    _run(
        _train_cmd(args, index, killed, "none", cache),
        ends,
        slow,
        work / "killed.log",
        lambda: bool(list_complete(killed)),
    )
    if time.monotonic() >= ends:
        return {**result, "status": _failed("to-be-killed", None)}
    snap = latest(killed)
    result["killed_after"] = snap.name if snap else None
    if snap is None or snap.name == latest(work / "uninterrupted").name:
        return {**result, "status": "failed: the kill did not land between the snapshot and the end of the run"}
    rc, err = _run(_train_cmd(args, index, killed, "auto", cache), ends, env, work / "resumed.log")
    if rc != 0:
        return {**result, "status": _failed("resumed", rc),
                "output_tail": err[-2000:]}  # fmt: skip
    result["resumed_from"] = next((ln for ln in err.splitlines() if "resumed from" in ln), "")
    result["resumed_graphs"] = next((ln.strip() for ln in err.splitlines() if "chain graphs compiled" in ln), "")
    a, b = checkpoint_state_dict(latest(work / "uninterrupted")), checkpoint_state_dict(latest(killed))
    worst, worst_key = 0.0, ""
    for k in a:
        x, y = a[k].double(), b[k].double()
        scale = max(float(x.norm()), FLOOR * x.numel() ** 0.5)
        ratio = float((x - y).norm()) / scale
        if ratio > worst:
            worst, worst_key = ratio, k
    bitwise = all(torch.equal(a[k], b[k]) for k in a)
    ok = bitwise if args.smoke else worst <= RTOL
    result.update(
        status="ok" if ok else "failed: weights differ beyond the tolerance",
        bitwise_equal=bitwise,
        max_floored_relative_l2=worst,
        worst_tensor=worst_key,
        tolerance=f"‖a − b‖ ≤ {RTOL:g} · max(‖a‖, {FLOOR:g} · √numel) per tensor"
        + ("; bitwise required on CPU" if args.smoke else ""),
        deterministic_kernels=True,
    )
    return result
