"""End-to-end training on one CPU process with real packaged images (LFW faces)."""

import pytest
from conftest import ROOT
from launch import module
from tb_read import read_events, scalar_series


@pytest.mark.slow
def test_100_iterations_improve_reconstruction_and_prior_likelihood(tmp_path):
    """100 iterations of batch 32 (the MSE falls to under a third by then, measured: 0.21 -> 0.06; it was
    150 and 300, which proved nothing more)."""
    run_dir, shard_dir = tmp_path / "run", tmp_path / "lfw16"
    # The preset's own shard command, as its comment gives it (only the output folder moved): what it
    # writes must be what the preset reads, so data.on_mismatch=error below stops at nothing.
    (line,) = [ln for ln in (ROOT / "configs/lfw_faces.yaml").read_text().splitlines() if "lfbm-shards demo" in ln]
    build = [*line.split("lfbm-shards", 1)[1].split(), "--no-progress"]
    build[build.index("--out") + 1] = str(shard_dir)
    done = module("data_tools.build_shards", *build, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cmd = [
        "--config",
        "configs/lfw_faces.yaml",
        f"data.shards=[{shard_dir}/index.json]",
        f"train.run_dir={run_dir}",
        "train.total_kimg=3.2",
        "train.batch_per_gpu=32",
        "train.log_every_kimg=0.32",
        "train.image_every_kimg=3.2",
        "train.snapshot_every_kimg=0",
        "data.on_mismatch=error",
    ]
    proc = module("lfbm_dist.train", *cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "config.yaml").is_file()
    # the suite's longest training ran with the hang watchdog on (its defaults): no false alarm
    assert not any(w in proc.stderr for w in ("has not finished", "stopped responding", "straggler:")), proc.stderr
    acc = read_events(run_dir / "tensorboard")
    mse = [v for _, v in scalar_series(acc, "recon_mse")]
    neg_log_p = [v for _, v in scalar_series(acc, "loss/prior")]  # −mean log p_α(z) of inferred z
    assert len(mse) == 10  # 100 iterations, one tick per 10
    first, last = sum(mse[:3]) / 3, sum(mse[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    assert sum(neg_log_p[-3:]) / 3 < sum(neg_log_p[:3]) / 3, neg_log_p
    tags = acc.Tags()
    assert {"samples/prior", "reconstructions"} <= set(tags["images"])
    log_p = [v for _, v in scalar_series(acc, "log_p_z")]
    assert sum(log_p[-3:]) / 3 > sum(log_p[:3]) / 3  # log p_α(z) of the inferred latents rises
    for tag in ("loss/generator", "langevin_grad_norm", "images_per_sec", "lr/generator", "lr/prior", "skipped_steps"):
        assert tag in tags["scalars"], tag


@pytest.mark.slow
def test_learning_from_occluded_data_logs_recovery_and_samples(tmp_path):
    run_dir = tmp_path / "occ"
    proc = module(
        "lfbm_dist.train",
        "--config",
        "configs/test_tiny.yaml",
        f"train.run_dir={run_dir}",
        "data.occlusion=saltpepper:50",
        "train.total_kimg=0.16",
        "train.log_every_kimg=0.04",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    acc = read_events(run_dir / "tensorboard")
    recovery = [v for _, v in scalar_series(acc, "recovery_mse")]
    assert len(recovery) == 4 and all(0 < v < 1 for v in recovery)
    out = tmp_path / "samples"
    proc = module("lfbm_dist.sample", "--run", str(run_dir), "--num", "6", "--batch", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.glob("sample_*.png"))) == 6 and (out / "grid.png").is_file()
    again = tmp_path / "again"
    again_proc = module("lfbm_dist.sample", "--run", str(run_dir), "--num", "6", "--batch", "6", "--out", str(again))
    assert again_proc.returncode == 0, again_proc.stderr[-2000:]
    assert (out / "sample_000005.png").read_bytes() == (again / "sample_000005.png").read_bytes()  # index-seeded
    done = tmp_path / "done"
    proc = module(
        *[
            "lfbm_dist.sample",
            "--run",
            str(run_dir),
            "--complete",
            str(out / "sample_000000.png"),
            "--mask",
            "center",
            "--completions",
            "2",
            "--out",
            str(done),
            "langevin.test_num_steps=5",
        ][:-1],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(done.glob("sample_000000_completion*.png"))) == 2
