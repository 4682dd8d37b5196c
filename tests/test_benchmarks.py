"""The benchmark scripts run and print the JSON that docs/PERFORMANCE.md is built from. No timing
is asserted here (speed comes from benchmarks, not tests); what is checked is that every variant
ran, that the derived figures are consistent with the raw ones, and the FLOP count."""

import json
import subprocess
import sys

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
            "prior.flow_steps=1",  # one Glow step: the same ladder with fewer kernels to compile
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
        "+compiled_step_chain",
        "+large_chain_batch",
        "plain_eager",
    }
    assert set(out["not_applicable"]) == {"+bf16_autocast", "+cudnn_benchmark", "+cuda_graphs"}  # CPU
    tuned = "channels_last=on cudnn_benchmark=off compile=default"
    assert variants["+compile"]["fast_path"] == f"{tuned} (log-posterior only)"
    step = f"{tuned} (one Langevin step)"
    assert variants["+compiled_step_chain"]["fast_path"] == variants["+large_chain_batch"]["fast_path"] == step
    compiled = ("+compile", "+compiled_step_chain", "+large_chain_batch")
    assert all("compile_fallback" not in variants[n] for n in compiled)
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
        assert v["images_per_sec"] == pytest.approx(images / v["step_s_median"], rel=1e-12), name  # unrounded
        assert v["achieved_tflops"] == pytest.approx(images * flops["total"] / v["step_s_median"] / 1e12, rel=1e-12)
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
    assert out["bus_bandwidth_GBps"] == pytest.approx(out["bytes"] / out["median_s"] / 1e9, rel=1e-12)  # unrounded


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
