"""The benchmark scripts run and print the JSON that docs/PERFORMANCE.md is built from. No timing
is asserted here (speed comes from benchmarks, not tests); what is checked is that every variant
ran, that the derived figures are consistent with the raw ones, and the FLOP count."""

import json
import subprocess
import sys
import time

import pytest
from conftest import PYTHON, ROOT


@pytest.mark.slow
def test_train_step_benchmark_prints_every_variant_of_the_ladder():
    proc = subprocess.run(
        [
            PYTHON,
            "benchmarks/bench_train_step.py",
            "--config",
            "test_tiny",
            "--batch-per-gpu",
            "4",
            "--steps",
            "2",
            "--ablate",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    variants = out["variants"]
    assert set(variants) == {
        "lfbm_dist",
        "no_weight_grads+fused_update",
        "+channels_last",
        "+compile",
        "+whole_chain_graph",
        "+large_chain_batch",
        "plain_eager",
    }
    assert set(out["not_applicable"]) == {"+bf16_autocast", "+cudnn_benchmark", "+cuda_graphs"}  # CPU
    assert variants["+compile"]["fast_path"] == "channels_last=on cudnn_benchmark=off compile=default (per step)"
    whole = "channels_last=on cudnn_benchmark=off compile=default (whole chain ≤ 20 steps/graph)"  # K = 2: one graph
    assert variants["+whole_chain_graph"]["fast_path"] == variants["+large_chain_batch"]["fast_path"] == whole
    assert all("compile_fallback" not in variants[n] for n in ("+compile", "+whole_chain_graph", "+large_chain_batch"))
    assert variants["lfbm_dist"]["fast_path"] == "channels_last=off cudnn_benchmark=off compile=off"  # CPU auto
    # the large chain batch runs 4× the learning micro-batch's chains per step (default --chain-batch)
    large = variants["+large_chain_batch"]
    assert (large["chain_batch"], large["learning_micro_batch"]) == (16, 4)
    # test_tiny = tiny16, nz 8, ngf 8: MACs C_in·C_out·k²·H_in·W_in of 8→16 on 1², 16→8 on 4², 8→3 on 8²
    flops = variants["lfbm_dist"]["flops_per_image"]
    assert flops["generator_forward"] == 2 * (8 * 16 * 16 * 1 + 16 * 8 * 16 * 16 + 8 * 3 * 16 * 64)
    assert flops["total"] == (2 * out["langevin_steps"] + 3) * flops["generator_forward"]
    for name, v in variants.items():
        images = v["chain_batch"]
        assert v["images_per_sec"] == pytest.approx(images / v["step_s_median"], rel=1e-3), name
        assert v["achieved_tflops"] == pytest.approx(
            images * flops["total"] / v["step_s_median"] / 1e12, rel=1e-2, abs=1e-4
        )
        assert v["langevin_share"] + v["learning_share"] == pytest.approx(1.0, abs=0.25)  # medians of parts
    assert set(out["speedup_vs_plain_eager"]) == set(variants) - {"plain_eager"}


def test_flop_count_of_the_256_generator_matches_a_hand_count():
    """Table 12 generator, nz 128: ≈ 4.94 GMAC per image, the issue's ≈ 5 GMAC; K = 60 → 1.214 TFLOP."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from flops import iteration_flops_per_image

    from lfbm_dist.models import build_generator

    widths = [128 * m for m in (16, 8, 4, 2, 2, 1)]
    macs = 128 * widths[0] * 16 * 1  # 1² -> 4², kernel 4
    side = 4
    for c_in, c_out in zip(widths, widths[1:] + [3]):  # each k4 s2 p1 layer doubles the side
        macs += c_in * c_out * 16 * side * side
        side *= 2
    assert macs == 4_936_695_808
    flops = iteration_flops_per_image(build_generator("celebahq256", nz=128), 128, 60)
    assert flops["generator_forward"] == 2 * macs
    assert flops["total"] == 123 * 2 * macs and round(flops["total"] / 1e12, 3) == 1.214


@pytest.mark.slow
def test_allreduce_benchmark_on_two_gloo_ranks():
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "benchmarks/bench_allreduce.py",
            "--config",
            "test_tiny",
            "--repeats",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert (out["world_size"], out["backend"], out["parameters"]) == (2, "gloo", 5787)  # test_tiny's gen + prior
    assert out["bytes"] == 4 * out["parameters"] and out["median_s"] > 0
    # ring all-reduce bus bandwidth: 2(N−1)/N · bytes / time
    assert out["bus_bandwidth_GBps"] == pytest.approx(out["bytes"] / out["median_s"] / 1e9, rel=0.01)


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


def _measured(section):
    return [r for part in section["parts"] for r in part["rows"] if r.get("phase", "measured") == "measured"]


@pytest.mark.slow
def test_gpu_proof_smoke_runs_every_section_on_cpu(tmp_path):
    """The one-shot GPU proof, in its CPU smoke mode: every section runs and reports, the SIGKILL
    lands between the snapshot and the end, the resumed weights are bitwise those of the uninterrupted
    run, the chain variants match the eager loop, and the markdown rows are written."""
    report = _proof(tmp_path)
    sections = report["sections"]
    names = ("gpu_tests", "ablation", "chain_variants", "resume", "chain_long", "fid", "ablation_more")
    assert {k: v["status"] for k, v in sections.items()} == {k: "ok" for k in names}
    assert "skipped" in sections["gpu_tests"]["parts"][0]["summary"]
    assert [v["variant"] for v in _measured(sections["ablation"])] == ["lfbm_dist", "plain_eager"]
    more = _measured(sections["ablation_more"])  # +cuda_graphs: not applicable on CPU
    assert [(v["variant"], v["chain_batch"]) for v in more] == [
        ("+large_chain_batch", 16), ("lfbm_dist", 8), ("plain_eager", 8)
    ]  # fmt: skip
    chains = _measured(sections["chain_variants"]) + _measured(sections["chain_long"])
    assert [r["variant"] for r in chains] == ["cudagraph_one_step", "graph:1", "graph:1"]
    assert all(r["status"] == "ok" and r["max_abs_diff_vs_eager"] < 1e-5 for r in chains), chains
    resume = sections["resume"]
    assert resume["killed_after"] == "ckpt-000000000016" and resume["bitwise_equal"] is True
    assert "resumed from ckpt-000000000016" in resume["resumed_from"]
    fid = sections["fid"]["parts"][0]["result"]
    assert fid["samples"] == 16 and fid["extrapolated_50k_seconds"] > 0
    rows = (tmp_path / "gpu_proof.md").read_text()
    assert "| test_tiny | CPU | 8 (8) | lfbm_dist |" in rows and "Resume after SIGKILL: ok" in rows
    assert "| cudagraph_one_step | 1 | 1 |" in rows


@pytest.mark.slow
def test_gpu_proof_out_of_budget_keeps_what_it_measured(tmp_path):
    """--budget-s too small for the later sections: every section still has a status, the last ones
    say they were skipped, a cut section keeps the rows it streamed, and the finished ones their numbers."""
    started = time.monotonic()
    report = _proof(tmp_path, "--budget-s", "40")
    assert time.monotonic() - started < 40 + 30  # the budget, plus the proof's own start and report
    sections = report["sections"]
    assert list(sections) == ["gpu_tests", "ablation", "chain_variants", "resume", "chain_long", "fid", "ablation_more"]
    assert sections["gpu_tests"]["status"] == "ok"
    assert sections["ablation_more"]["status"].startswith("skipped: out of time")
    for name, section in sections.items():
        status = section["status"]
        assert status == "ok" or status.startswith(("incomplete: ", "skipped: out of time")), (name, status)
        if status == "ok" and name in ("ablation", "chain_variants"):
            assert _measured(section), name  # finished: its numbers are in the JSON
        if status.startswith("incomplete: ") and "timed out" in status:
            cut = [p for p in section["parts"] if p["status"].startswith("timed out")]
            jsonl = tmp_path / f"{name}.{section['parts'].index(cut[0])}.jsonl"
            on_disk = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
            assert cut[0]["rows"] == on_disk  # whatever it streamed before the kill is kept
    assert report["total_s"] <= 40 + 2  # sections are cut at the budget; the kill and the report take a moment


def test_gpu_proof_plan_puts_the_decisive_sections_first_and_fits_them_at_three_times_the_compile_estimate():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_proof

    args = gpu_proof.parse([])
    plan = gpu_proof.plan(args)
    order = args.sections.split(",")
    assert tuple(order[: len(gpu_proof.PRIORITY)]) == gpu_proof.PRIORITY
    at_3x = gpu_proof.plan(gpu_proof.parse(["--compile-s-per-step", str(3 * args.compile_s_per_step)]))
    assert sum(at_3x[name]["estimate_s"] for name in gpu_proof.PRIORITY) <= gpu_proof.DEFAULT_BUDGET_S
    # the variant decision: the one-step CUDA graph beside graphs of 20 (and 60, later) steps of a K = 60 chain
    (cmd,) = plan["chain_variants"]["cmds"]
    assert cmd[cmd.index("--variants") + 1] == "cudagraph_one_step,graph:20" and "60" in cmd
    assert plan["chain_long"]["cmds"][0][-1] == "graph:60"


def test_gpu_table4_script_names_the_decisive_points_of_the_paper_scale():
    """benchmarks/gpu_table4.sh runs held-out 4, flow vs Gaussian, seeds 0 and 1, at the paper's
    1,060 kimg: its point names must stay points of the grid's paper scale."""
    import re

    from lfbm_dist.repro.spec import load_grid

    script = (ROOT / "benchmarks" / "gpu_table4.sh").read_text()
    named = set(re.findall(r"heldout_class-\d_prior-\w+_seed-\d", script))
    assert named == {f"heldout_class-4_prior-{p}_seed-{s}" for p in ("flow", "gaussian") for s in (0, 1)}
    grid = load_grid(ROOT / "experiments" / "table4_anomaly.yaml")
    points = {p.name: p for p in grid.points("paper")}
    assert named <= set(points)
    assert all("train.total_kimg=1060" in points[n].overrides for n in named)
