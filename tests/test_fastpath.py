"""The GPU fast path (lfbm_dist/fastpath.py) keeps the math: compiled and channels-last chains
against the eager chain and against the analytic posterior, the trainer end to end, and the clean
fallback when the compiler is missing. Real torch.compile (Inductor, C++ backend on CPU)."""

import os
import subprocess

import pytest
import torch
from conftest import PYTHON, ROOT, randomize_
from helpers_models import LinearGenerator
from test_langevin import _analytic_posterior, _run_chains

from lfbm_dist.config import ConfigError, PerfConfig, load_config
from lfbm_dist.inference import langevin_posterior
from lfbm_dist.models import FlowPrior, build_generator
from lfbm_dist.training.fastpath import FastPath


def test_auto_means_on_for_cuda_and_off_on_cpu():
    cpu = FastPath.resolve(PerfConfig(), torch.device("cpu"))
    assert (cpu.channels_last, cpu.cudnn_benchmark, cpu.compile_mode, cpu.log_posterior) == (False, False, None, None)
    gpu = FastPath.resolve(PerfConfig(compile="auto", compile_mode="reduce-overhead"), torch.device("cuda", 0))
    assert (gpu.channels_last, gpu.cudnn_benchmark, gpu.compile_mode) == (True, True, "reduce-overhead")
    # CUDA graphs do not exist on CPU: asking for them there compiles plainly rather than pretending.
    forced = FastPath.resolve(
        PerfConfig(channels_last="on", cudnn_benchmark="on", compile="on", compile_mode="reduce-overhead"),
        torch.device("cpu"),
    )
    assert (forced.channels_last, forced.cudnn_benchmark, forced.compile_mode) == (True, False, "default")
    # DeepSpeed crashes on NHWC parameters: auto stays off (and says so), an explicit on is refused.
    deepspeed = FastPath.resolve(PerfConfig(), torch.device("cuda", 0), deepspeed=True)
    assert not deepspeed.channels_last and "off under DeepSpeed" in deepspeed.describe()
    with pytest.raises(ConfigError, match="cannot run under DeepSpeed"):
        FastPath.resolve(PerfConfig(channels_last="on"), torch.device("cpu"), deepspeed=True)


def test_yaml_on_off_read_as_switches(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("perf: {compile: on, channels_last: off}\n")  # YAML 1.1 makes these booleans
    cfg = load_config(path)
    assert (cfg.perf.compile, cfg.perf.channels_last) == ("on", "off")
    with pytest.raises(ConfigError, match="perf.compile_mode must be one of"):
        load_config(path, ["perf.compile_mode=fastest"])


def test_compiled_channels_last_chain_matches_eager_and_computes_no_weight_grads():
    torch.manual_seed(0)
    gen = randomize_(build_generator("tiny16", nz=8, ngf=4), 0.05)
    prior = randomize_(FlowPrior(8, num_steps=2, hidden=8), 0.05, seed=1)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    mask = (torch.rand(6, 1, 16, 16) > 0.3).float()
    z_init, noise = torch.randn(6, 8), torch.randn(6, 5, 8)
    kwargs = dict(num_steps=5, step_size=0.1, sigma=0.3, mask=mask, z_init=z_init, noise=noise)
    eager = langevin_posterior(gen, prior, x, **kwargs)

    fast = FastPath.resolve(PerfConfig(channels_last="on", compile="on"), torch.device("cpu"))
    fast.apply(gen)
    assert gen.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    params = list(gen.parameters()) + list(prior.parameters())
    fired = []
    for p in params:
        p.grad = torch.full_like(p, 7.0)
        p.register_hook(lambda g: fired.append(1))
    compiled = langevin_posterior(gen, prior, fast.images(x), log_posterior_fn=fast.log_posterior, **kwargs)
    assert fast.fallback_reason is None and fast.compile_mode == "default"  # really compiled
    assert fired == [] and all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in params)
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-4), (compiled - eager).abs().max()


def test_compiled_chain_matches_analytic_posterior():
    """The core test's tolerances (mean 0.05, covariance 10 %) hold for the compiled chain."""
    torch.manual_seed(0)
    gen = LinearGenerator(nz=3, scale=0.6, seed=1)
    sigma = 1.0
    x_one = gen(torch.randn(1, 3, dtype=torch.float64))[0] + sigma * torch.randn(3, 2, 2, dtype=torch.float64)
    mean, cov = _analytic_posterior(gen.weight.detach(), x_one.flatten(), sigma)
    fast = FastPath.resolve(PerfConfig(compile="on"), torch.device("cpu"))
    z = _run_chains(gen, x_one, sigma, log_posterior_fn=fast.log_posterior)  # 4,000 chains × 1,500 steps
    assert fast.fallback_reason is None
    assert (z.mean(0) - mean).abs().max() < 0.05
    assert torch.linalg.norm(torch.cov(z.T) - cov) / torch.linalg.norm(cov) < 0.10


def _train(run_dir, *overrides, env=None):
    cmd = [
        PYTHON,
        "-m",
        "lfbm_dist.train",
        "--config",
        "configs/test_tiny.yaml",
        f"train.run_dir={run_dir}",
        "train.total_kimg=0.032",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    (ckpt,) = (run_dir / "checkpoints").iterdir()
    return proc, load_file(str(ckpt / "model.safetensors"))


@pytest.mark.slow
def test_trainer_fast_path_matches_eager_and_falls_back_without_a_compiler(tmp_path):
    _, eager = _train(tmp_path / "eager")
    proc, fast = _train(tmp_path / "fast", "perf.channels_last=on", "perf.compile=on")
    assert "fast path: channels_last=on cudnn_benchmark=off compile=default" in proc.stdout
    assert "torch.compile failed" not in proc.stderr
    for key, value in eager.items():
        assert torch.allclose(fast[key], value, rtol=1e-4, atol=1e-5), key

    # No working C++ compiler: one line says so, and the run is the eager run exactly.
    env = dict(os.environ, CXX="/nonexistent/g++", TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
    proc, fallback = _train(tmp_path / "fallback", "perf.compile=on", env=env)
    lines = [line for line in proc.stderr.splitlines() if "torch.compile failed" in line]
    assert len(lines) == 1 and "C++ compiler" in lines[0] and "runs eagerly" in lines[0], proc.stderr[-2000:]
    for key, value in eager.items():
        assert torch.equal(fallback[key], value), key
