"""End-to-end training on one CPU process with real packaged images (LFW faces)."""
import subprocess

import pytest

from conftest import PYTHON, ROOT
from tb_read import read_events, scalar_series


@pytest.mark.slow
def test_few_hundred_iterations_improve_reconstruction_and_prior_likelihood(tmp_path):
    run_dir, shard_dir = tmp_path / "run", tmp_path / "lfw16"
    build = [PYTHON, "-m", "data_tools.build_shards", "demo", "--name", "lfw", "--out", str(shard_dir),
             "--resolution", "16", "--samples-per-shard", "64", "--no-progress"]
    assert subprocess.run(build, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    cmd = [PYTHON, "-m", "lfbm_dist.train", "--config", "configs/quickstart.yaml",
           f"data.shards=[{shard_dir}/index.json]", f"train.run_dir={run_dir}", "train.total_kimg=9.6", "train.batch_per_gpu=32",
           "train.log_every_kimg=0.32", "train.image_every_kimg=4.8", "train.snapshot_every_kimg=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "config.yaml").is_file()
    acc = read_events(run_dir / "tensorboard")
    mse = [v for _, v in scalar_series(acc, "recon_mse")]
    neg_log_p = [v for _, v in scalar_series(acc, "loss/prior")]  # −mean log p_α(z) of inferred z
    assert len(mse) == 30  # 300 iterations, one tick per 10
    first, last = sum(mse[:3]) / 3, sum(mse[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    assert sum(neg_log_p[-3:]) / 3 < sum(neg_log_p[:3]) / 3, neg_log_p
    tags = acc.Tags()
    assert {"samples/prior", "reconstructions"} <= set(tags["images"])
    for tag in ("loss/generator", "langevin_grad_norm", "images_per_sec", "lr/generator", "lr/prior",
                "skipped_steps"):
        assert tag in tags["scalars"], tag
