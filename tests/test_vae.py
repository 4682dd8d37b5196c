"""LFBM-VAE baseline: the IAF posterior's log-density against a brute-force Jacobian, and training."""

import math
import subprocess

import pytest
import torch
from conftest import PYTHON, ROOT, randomize_

from lfbm_dist.models.encoder import IAFEncoder


def test_iaf_log_q_matches_bruteforce_jacobian():
    torch.manual_seed(0)
    enc = randomize_(IAFEncoder(16, 3, nz=5, ndf=4, iaf_steps=3, iaf_hidden=12, context=6).double(), 0.2)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 2 - 1
    eps = torch.randn(1, 5, dtype=torch.float64)
    z, log_q = enc(x, eps)
    jac = torch.autograd.functional.jacobian(lambda e: enc(x, e[None])[0][0], eps[0])  # ∂z/∂ε, (5, 5)
    reference = (-0.5 * (eps[0] @ eps[0]) - 2.5 * math.log(2 * math.pi)) - torch.linalg.slogdet(jac).logabsdet
    assert abs(float(log_q[0] - reference)) < 1e-9
    # autoregressive: each IAF step is triangular, but the composition is a full (non-diagonal) map
    assert jac.abs().sum() > jac.diagonal().abs().sum() + 1e-3


@pytest.mark.slow
def test_vae_baseline_trains_through_the_same_loop(tmp_path):
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "lfbm_dist.train",
            "--config",
            "configs/test_tiny.yaml",
            "inference=vae",
            f"train.run_dir={tmp_path}",
            "train.total_kimg=0.8",
            "train.log_every_kimg=0.2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from tb_read import read_events, scalar_series

    acc = read_events(tmp_path / "tensorboard")
    mse = [v for _, v in scalar_series(acc, "recon_mse")]
    kl = [v for _, v in scalar_series(acc, "loss/kl")]
    assert mse[-1] < 0.5 * mse[0] and len(kl) == 4
    assert "lr/encoder" in acc.Tags()["scalars"]


def test_the_encoder_does_not_change_the_initial_generator_and_prior():
    """LFBM-VAE and LFBM-MCMC start from the same generator and prior for a seed (a fair comparison;
    also keeps runs of earlier commits reproducible): the encoder is drawn after both."""
    from lfbm_dist.config import load_config
    from lfbm_dist.training.build import build_model

    def initial(*overrides):
        torch.manual_seed(0)
        return build_model(load_config(ROOT / "configs/mnist28.yaml", list(overrides))).state_dict()

    mcmc, vae = initial(), initial("inference.kind=vae")
    assert any(k.startswith("encoder.") for k in vae)
    assert {k for k in vae if not k.startswith("encoder.")} == set(mcmc)
    assert all(torch.equal(mcmc[k], vae[k]) for k in mcmc)
