"""On a CUDA GPU: the defaults are the compiled whole chain replayed as CUDA graphs, and they keep
the math of the eager step loop. Skipped with a reason elsewhere; benchmarks/gpu_proof.py runs these
first on every GPU loan."""

import subprocess

import pytest
import torch
from conftest import PYTHON, ROOT, randomize_

from lfbm_dist.config import PerfConfig
from lfbm_dist.inference import GRAPHS, langevin_posterior
from lfbm_dist.models import FlowPrior, build_generator
from lfbm_dist.training.fastpath import FastPath

pytestmark = pytest.mark.gpu


def _inputs(device, batch=16, steps=8, nz=16):
    torch.manual_seed(0)
    gen = randomize_(build_generator("tiny32", nz=nz, ngf=16), 0.02).to(device)
    prior = randomize_(FlowPrior(nz, num_steps=2, hidden=32), 0.02, seed=1).to(device)
    x = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
    kwargs = dict(num_steps=steps, step_size=0.1, sigma=0.3, z_init=torch.randn(batch, nz, device=device))
    kwargs["noise"] = torch.randn(batch, steps, nz, device=device)
    return gen, prior, x, kwargs


def test_default_cuda_chain_is_one_cuda_graph_and_matches_the_eager_loop():
    device = torch.device("cuda", 0)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare in true fp32
    try:
        gen, prior, x, kwargs = _inputs(device)
        eager = langevin_posterior(gen, prior, x, **kwargs)
        fast = FastPath.resolve(PerfConfig(), device)  # the defaults
        assert fast.compile_mode == "reduce-overhead"
        fast.apply(gen)
        runner, before, skips = fast.test_time_runner(16), GRAPHS.graphs_compiled, GRAPHS.cudagraph_skips
        z = langevin_posterior(gen, prior, x, runner=runner, **kwargs)
        again = langevin_posterior(gen, prior, x, runner=runner, **kwargs)
        torch.cuda.synchronize()
        assert GRAPHS.fallback_reason is None and GRAPHS.cudagraph_skips == skips, GRAPHS.summary()
        assert GRAPHS.graphs_compiled - before == 1  # one graph for the whole 8-step chain, replayed
        assert torch.equal(z, again)  # a replay reproduces the captured run
        assert (z - eager).abs().max() <= 1e-4, (z - eager).abs().max()
    finally:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = False


def test_bf16_default_chain_stays_close_to_fp32():
    device = torch.device("cuda", 0)
    gen, prior, x, kwargs = _inputs(device)
    ref = langevin_posterior(gen, prior, x, **kwargs)
    fast = FastPath.resolve(PerfConfig(), device)
    z = langevin_posterior(gen, prior, x, runner=fast.runner(None, torch.bfloat16), **kwargs)
    assert torch.isfinite(z).all() and GRAPHS.fallback_reason is None
    assert (z - ref).norm() / ref.norm() < 0.02


def test_trainer_on_cuda_starts_with_the_graphed_whole_chain():
    cmd = [PYTHON, "-m", "lfbm_dist.train", "--config", "configs/test_tiny.yaml", "train.total_kimg=0.032",
           "train.run_dir=runs/gpu_test_trainer", "train.overwrite=true", "train.accumulation_steps=2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "compile=reduce-overhead (whole chain" in out and "cuda_graphs=on" in out, out[-3000:]
    assert "Langevin chains 16 at a time (learning micro-batch 8)" in out, out[-3000:]
    assert "torch.compile failed" not in out and "CUDA graphs were skipped" not in out
