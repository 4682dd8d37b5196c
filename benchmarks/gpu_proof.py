"""The one-shot GPU proof: everything a short GPU loan must show, in one run that keeps its numbers.

    python benchmarks/gpu_proof.py --out proof/                  # one H100/H200, --budget-s 480 by default
    python benchmarks/gpu_proof.py --smoke --budget-s 20 --out d  # the same script on CPU (CI runs it)

Every section is a child process in its own process group, with a deadline (≤ 3 × its estimate and ≤
what is left of --budget-s); at the deadline the group is SIGKILLed (a test's trainer, DataLoader
workers and all). The benchmarks stream each variant to OUT/<section>.jsonl as soon as it is measured,
so a cut-off section keeps every finished variant; OUT/gpu_proof.json is rewritten before and after
every section (a section that was running when the whole proof was killed says "running").

Sections, highest-value numbers first. Estimates from c = --compile-s-per-graph: the cold compile of
ONE Langevin step graph of the preset for CUDA (Dynamo + AOTAutograd + Inductor + Triton's cubins),
measured without a GPU by benchmarks/cuda_codegen.py (COMPILE_S_PER_GRAPH); compile time no longer
grows with K.
The first three fit the default budget even when compilation is three times slower (`plan` below;
CI checks it):
  gpu_tests       the GPU-marked tests (pytest -m gpu): the default chain is one CUDA graph = eager loop
  ablation        celebahq256 (K = 60), batch 64: the defaults (one compiled step, each chain one CUDA
                  graph) and plain eager: img/s, TFLOP/s, % of the bf16 peak, first step, memory
  chain_variants  K = 60 chain, batch 64: the default (one CUDA graph per chain around the compiled
                  step) vs the same step without the capture vs reduce-overhead's graph per step —
                  what the capture is worth (img/s, first call, difference from the eager loop)
  resume          256² run from synthetic shards, SIGKILLed after its snapshot, resumed; deterministic
                  kernels (perf.deterministic), one compile cache for the three processes; weights vs
                  the uninterrupted run: relative L2 per tensor with an absolute floor (see TOLERANCE)
  fid             FID sampling + Inception throughput (10k measured, 50k extrapolated, labelled)
  ablation_more   batch 64 with a 256-chain batch and the per-step CUDA graphs; batch 128 and 256
Writes OUT/gpu_proof.json (raw) and OUT/gpu_proof.md (rows for docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from proof_resume import resume  # noqa: E402

BF16_PEAK_TFLOPS = 790.0  # the dense bf16 peak the targets are stated against (H100/H200 SXM)
CAP_FACTOR = 3.0  # a section may take 3 × its estimate before it is cut
PRIORITY = ("gpu_tests", "ablation", "chain_variants")  # must fit the default budget at CAP_FACTOR
DEFAULT_BUDGET_S = 480.0  # 8 minutes: one device call, with room for the machine's start and a rerun
# The cold compile of one celebahq256 Langevin step graph for CUDA (bf16, batch 32), measured without a
# GPU by benchmarks/cuda_codegen.py on a 2-core VM: Dynamo + AOTAutograd 4.7 s, Inductor's lowering and
# Triton's sm_90 compile of its 36 kernels (117 cubins) on one thread 20.3 s (docs/PERFORMANCE.md).
COMPILE_S_PER_GRAPH = 25.0


def plan(args) -> dict[str, dict]:
    """Each section: its command (or a callable) and its estimated seconds at c s per compiled graph."""
    c, py, s, o = args.compile_s_per_graph, sys.executable, args.sizes, args.overrides
    bench = [py, "benchmarks/bench_train_step.py", "--config", args.config, *o, "--ablate", "--steps", str(s["steps"])]
    chain = [py, "benchmarks/bench_chain_compile.py", "--config", args.config, *o, "--batch", str(s["batch"])]
    chain += ["--chain-steps", str(s["chain_k"])]
    more = [
        *([[*bench, "--batch-per-gpu", str(s["batch"]), "--only", "+large_chain_batch,+cuda_graphs"]] * s["large"]),
        *([*bench, "--batch-per-gpu", str(b), "--only", "lfbm_dist,plain_eager"] for b in s["more_batches"]),
    ]
    return {
        # the tests compile a few tiny graphs (≈ c/4 each at most); one 256² graph per training process
        "gpu_tests": {"cmds": [[py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]],
                      "estimate_s": 30 + 4 * c / 4},
        "ablation": {"cmds": [[*bench, "--batch-per-gpu", str(s["batch"]), "--only", "lfbm_dist,plain_eager"]],
                     "estimate_s": 20 + c + 4 * s["plain_step_s"]},
        # step and step_uncaptured share the default-mode graph (the second from the cache); reduce-overhead
        # compiles its own
        "chain_variants": {"cmds": [[*chain, "--variants", s["chain_variants"]]],
                           "estimate_s": 15 + 2 * c + 12 * s["chain_run_s"]},
        "resume": {"fn": resume, "estimate_s": 3 * 20 + c + s["resume_steps_s"]},
        "fid": {"cmds": [[py, "benchmarks/bench_fid_throughput.py", "--config", args.config, *o, "--samples",
                          str(s["fid_samples"]), "--batch", str(s["fid_batch"])]], "estimate_s": 40},
        "ablation_more": {"cmds": more, "estimate_s": len(more) * (20 + c + 4 * s["plain_step_s"])},
    }  # fmt: skip


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_streamed(cmd: list[str], timeout_s: float, jsonl: Path, log: Path, env: dict) -> dict:
    """One child in its own process group; its JSON on success, and in every case the rows it streamed."""
    if cmd[1].startswith("benchmarks/bench_"):
        cmd = [*cmd, "--jsonl", str(jsonl)]
    started = time.monotonic()
    with (
        log.open("w") as err,
        subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        ) as proc,
    ):
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a pytest's trainers, DataLoader workers
            proc.communicate()
            return {"status": f"timed out after {timeout_s:.0f} s (process group killed)", "cmd": cmd,
                    "rows": _jsonl(jsonl), "stderr_tail": log.read_text()[-1500:]}  # fmt: skip
    entry = {"cmd": cmd, "wall_s": round(time.monotonic() - started, 1), "rows": _jsonl(jsonl)}
    if proc.returncode not in (0, 5):  # pytest: 5 = nothing ran (every test skipped without CUDA)
        return {**entry, "status": f"failed (rc {proc.returncode})", "stderr_tail": log.read_text()[-1500:]}
    try:
        return {**entry, "status": "ok", "result": json.loads(out)}
    except json.JSONDecodeError:
        return {**entry, "status": "ok", "summary": (out.strip().splitlines() or [""])[-1]}


def run_section(name: str, section: dict, args, deadline_s: float, env: dict) -> dict:
    if "fn" in section:
        return section["fn"](args, deadline_s, env)
    parts, ends = [], time.monotonic() + deadline_s
    for i, cmd in enumerate(section["cmds"]):
        left = ends - time.monotonic()
        if left < 1:
            parts.append({"status": "skipped: the section's deadline passed", "cmd": cmd})
            continue
        parts.append(run_streamed(cmd, left, args.out / f"{name}.{i}.jsonl", args.out / f"{name}.{i}.log", env))
    ok = all(p["status"] == "ok" for p in parts)
    return {"status": "ok" if ok else "incomplete: " + "; ".join(p["status"] for p in parts), "parts": parts}


def main(argv: list[str] | None = None, plan_sections=None) -> int:
    """plan_sections: the plan to run instead of `plan(args)` (the budget test's sections of known length)."""
    args = parse(argv)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("*.jsonl"):
        stale.unlink()  # rows of an earlier proof must not pass for this one's
    started = time.monotonic()
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    sections = (plan_sections or plan)(args)
    report = {"benchmark": "gpu_proof", "smoke": args.smoke, "device": name, "torch": torch.__version__,
              "config": args.config, "bf16_peak_tflops": BF16_PEAK_TFLOPS, "budget_s": args.budget_s,
              "plan": {k: round(v["estimate_s"], 1) for k, v in sections.items()}, "sections": {}}  # fmt: skip

    def save() -> None:
        (args.out / "gpu_proof.json").write_text(json.dumps(report, indent=2) + "\n")

    for key in args.sections.split(",") if plan_sections is None else sections:
        section, left = sections[key], args.budget_s - (time.monotonic() - started)
        deadline = min(CAP_FACTOR * section["estimate_s"], left - 2)
        if deadline < min(5.0, section["estimate_s"]):
            report["sections"][key] = {"status": f"skipped: out of time ({left:.0f} s of the budget left)"}
            continue
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Cold compiles (first-step times are honest); the smoke run's sections share one. Never the
        # caller's: a section killed at its deadline mid-compile can leave a truncated kernel .so
        # there (torch's CPU code cache writes in place), which a later process would load.
        env["TORCHINDUCTOR_CACHE_DIR"] = str(args.out / "compile_cache" / ("smoke" if args.smoke else key))
        report["sections"][key] = {"status": "running", "deadline_s": round(deadline, 1)}
        save()
        begin = time.monotonic()
        try:
            result = run_section(key, section, args, deadline, env)
        except Exception as exc:  # noqa: BLE001 — one section's failure must not cost the others' numbers
            result = {"status": f"failed: {type(exc).__name__}: {exc}"[:500]}
        report["sections"][key] = {**result, "deadline_s": round(deadline, 1),
                                   "section_s": round(time.monotonic() - begin, 1)}  # fmt: skip
        save()
    report["total_s"] = round(time.monotonic() - started, 1)
    save()
    from proof_report import markdown

    (args.out / "gpu_proof.md").write_text(markdown(report))
    print(json.dumps({k: v["status"] for k, v in report["sections"].items()}, indent=1))
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model: checks the script itself")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_proof")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="all sections together")
    p.add_argument("--sections", default=",".join(
        ("gpu_tests", "ablation", "chain_variants", "resume", "fid", "ablation_more")))  # fmt: skip
    p.add_argument("--compile-s-per-graph", type=float, default=COMPILE_S_PER_GRAPH,
                   help="c in the estimates: s to compile one Langevin step graph cold")  # fmt: skip
    args = p.parse_args(argv)
    import torch

    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:  # test_tiny, K = 2; compile on CPU costs ≈ 15 s a graph
        args.config, args.compile_s_per_graph = "test_tiny", 15.0
        # (+large_chain_batch is left to tests/test_benchmarks.py's ladder: one compile less in CI)
        # (reduce-overhead is plain compilation on CPU: the smoke leaves it to the GPU)
        args.sizes = dict(batch=4, steps=1, chain_k=2, chain_variants="step,step_uncaptured", more_batches=[8],
                          large=0, plain_step_s=0.1,
                          chain_run_s=0.1, resume_steps_s=10, fid_samples=16, fid_batch=8,
                          train_batch=4, train_steps=8, train_images=32, resolution=16)  # fmt: skip
        args.overrides = ["langevin.num_steps=2", "prior.flow_steps=1"]  # one Glow step: fewer kernels to compile
    else:
        args.config = "celebahq256"
        args.sizes = dict(batch=64, steps=3, chain_k=60, chain_variants="step,step_uncaptured,reduce-overhead",
                          more_batches=[128, 256], large=1, plain_step_s=3.5,
                          chain_run_s=0.3, resume_steps_s=20, fid_samples=10_000, fid_batch=250,
                          train_batch=16, train_steps=40, train_images=640, resolution=256)  # fmt: skip
        args.overrides = []
    return args


if __name__ == "__main__":
    sys.exit(main())
