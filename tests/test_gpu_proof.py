"""The one-shot GPU proof (benchmarks/gpu_proof.py) in its CPU smoke mode: every section runs and
reports; with a budget too small for the later sections every section still has a status and the
finished ones keep their numbers; the plan puts the decisive sections first."""

import json
import subprocess
import sys
import time

import pytest
from conftest import PYTHON, ROOT


def _proof(out, *args):
    proc = subprocess.run(
        [PYTHON, "benchmarks/gpu_proof.py", "--smoke", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu_proof.json").read_text())


def _ends_within(pid: int, timeout_s: float) -> bool:
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True  # dead, an orphan its new parent has not reaped yet
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _measured(section):
    return [r for part in section["parts"] for r in part["rows"] if r.get("phase", "measured") == "measured"]


def test_gpu_proof_out_of_budget_keeps_what_it_measured(tmp_path):
    """--budget-s too small for the later sections: the first fits, the one running at the budget is
    cut (its process group killed — a grandchild too —, the rows it streamed kept), the rest say they
    were skipped, and the report still has every section's status and the finished one's numbers.
    The sections are real child processes whose length does not depend on the machine's speed (one
    prints its result at once, one streams a row and then never ends), so the cut happens wherever
    the suite runs; the real sections run in the smoke test below."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_proof

    py = sys.executable
    quick = [py, "-c", "import json; print(json.dumps({'images_per_sec': 1.0}))"]
    row = json.dumps({"variant": "first", "phase": "measured"})
    stuck = [py, "-c", f"import subprocess, sys, time; open(sys.argv[1], 'a').write({row!r} + '\\n'); "
             "print('child', subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']).pid, "
             "flush=True, file=sys.stderr); time.sleep(600)", str(tmp_path / "stuck.0.jsonl")]  # fmt: skip
    sections = {
        "quick": {"cmds": [quick], "estimate_s": 30.0},
        "stuck": {"cmds": [stuck], "estimate_s": 1000.0},  # runs until the budget's end
        "later": {"cmds": [quick], "estimate_s": 30.0},
    }
    budget_s = 12
    assert gpu_proof.main(["--smoke", "--out", str(tmp_path), "--budget-s", str(budget_s)], lambda a: sections) == 0
    report = json.loads((tmp_path / "gpu_proof.json").read_text())
    got = report["sections"]
    assert list(got) == ["quick", "stuck", "later"]
    assert got["quick"]["status"] == "ok" and got["quick"]["parts"][0]["result"] == {"images_per_sec": 1.0}
    cut = got["stuck"]
    assert cut["status"].startswith("incomplete: timed out"), cut["status"]
    assert cut["parts"][0]["rows"] == [json.loads(row)]  # what it streamed before the kill is kept
    assert cut["deadline_s"] <= budget_s - 2  # never past the budget, whatever its estimate
    grandchild = int((tmp_path / "stuck.0.log").read_text().split()[1])
    assert _ends_within(grandchild, 30)  # SIGKILLed with its group
    assert got["later"]["status"].startswith("skipped: out of time")
    assert (tmp_path / "gpu_proof.md").is_file()


@pytest.mark.slow
def test_gpu_proof_smoke_runs_every_later_section_on_cpu(tmp_path):
    """The one-shot GPU proof, in its CPU smoke mode, every section (gpu_tests is pytest -m gpu: every
    test skipped here): every section runs and reports, the SIGKILL lands between the snapshot and the
    end, the resumed weights are bitwise those of the uninterrupted run, the chain variants match the
    eager loop, and the markdown rows are written."""
    names = ("gpu_tests", "ablation", "chain_variants", "resume", "fid", "ablation_more")
    report = _proof(tmp_path, "--sections", ",".join(names))
    sections = report["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {k: "ok" for k in names}
    assert [v["variant"] for v in _measured(sections["ablation"])] == ["lfbm_dist", "plain_eager"]
    more = _measured(sections["ablation_more"])  # smoke: batch 8 only (the ladder test covers the rest)
    assert [(v["variant"], v["chain_batch"]) for v in more] == [("lfbm_dist", 8), ("plain_eager", 8)]
    assert "skipped" in sections["gpu_tests"]["parts"][0]["summary"]  # no CUDA here
    chains = _measured(sections["chain_variants"])
    assert [r["variant"] for r in chains] == ["step", "step_uncaptured"]  # reduce-overhead: GPU only
    assert all(r["graphs"] == 1 for r in chains)  # one step graph each, for a chain of K steps
    assert all(r["status"] == "ok" and r["max_abs_diff_vs_eager"] < 1e-5 for r in chains), chains
    resume = sections["resume"]
    assert resume["killed_after"] == "ckpt-000000000016" and resume["bitwise_equal"] is True
    assert "resumed from ckpt-000000000016" in resume["resumed_from"]
    fid = sections["fid"]["parts"][0]["result"]
    assert fid["samples"] == 16 and fid["extrapolated_50k_seconds"] > 0
    rows = (tmp_path / "gpu_proof.md").read_text()
    assert "| test_tiny | CPU | 8 (8) | lfbm_dist |" in rows and "Resume after SIGKILL: ok" in rows
    assert "| step | 1 | 2 |" in rows


def test_gpu_proof_plan_puts_the_decisive_sections_first_and_fits_them_at_three_times_the_compile_estimate():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_proof

    args = gpu_proof.parse([])
    plan = gpu_proof.plan(args)
    order = args.sections.split(",")
    assert tuple(order[: len(gpu_proof.PRIORITY)]) == gpu_proof.PRIORITY
    at_3x = gpu_proof.plan(gpu_proof.parse(["--compile-s-per-graph", str(3 * args.compile_s_per_graph)]))
    assert sum(at_3x[name]["estimate_s"] for name in gpu_proof.PRIORITY) <= gpu_proof.DEFAULT_BUDGET_S
    # what the capture is worth: the default (one CUDA graph per chain) beside the same compiled step
    # uncaptured and reduce-overhead's graph per step, for a K = 60 chain
    (cmd,) = plan["chain_variants"]["cmds"]
    assert cmd[cmd.index("--variants") + 1] == "step,step_uncaptured,reduce-overhead"
    assert cmd[cmd.index("--chain-steps") + 1] == "60"
