"""On a CUDA GPU: the defaults compile ONE Langevin step and replay each chain as one CUDA graph around
it; every CUDA-graph mode keeps the math of the eager step loop; a recorded chain reads the weights an
optimizer updated in place. Skipped with a reason elsewhere; benchmarks/gpu_proof.py runs these first
on every GPU loan."""

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


@pytest.fixture
def true_fp32():
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare in true fp32
    yield
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False


def test_default_cuda_chain_is_one_cuda_graph_around_one_compiled_step(true_fp32):
    device = torch.device("cuda", 0)
    gen, prior, x, kwargs = _inputs(device)
    eager = langevin_posterior(gen, prior, x, **kwargs)
    fast = FastPath.resolve(PerfConfig(), device)  # the defaults
    assert (fast.compile_mode, fast.capture) == ("default", True)
    fast.apply(gen)
    runner = fast.test_time_runner(16)
    graphs, recorded = GRAPHS.graphs_compiled, GRAPHS.cuda_graphs_recorded
    z = langevin_posterior(gen, prior, x, runner=runner, **kwargs)
    again = langevin_posterior(gen, prior, x, runner=runner, **kwargs)
    longer = {**kwargs, "num_steps": 12, "noise": torch.randn(16, 12, 16, device=device)}
    langevin_posterior(gen, prior, x, runner=runner, **longer)
    torch.cuda.synchronize()
    assert GRAPHS.fallback_reason is None, GRAPHS.summary()
    assert GRAPHS.graphs_compiled - graphs == 1  # one step graph, for 8 and for 12 steps
    assert GRAPHS.cuda_graphs_recorded - recorded == 2  # one CUDA graph per chain length, replayed
    assert torch.equal(z, again)  # a replay reproduces the captured run
    assert (z - eager).abs().max() <= 1e-4, (z - eager).abs().max()


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
def test_every_cuda_graph_mode_keeps_the_eager_chain(mode, true_fp32):
    """Modes that record CUDA graphs themselves (a replay per step, marked and copied) and modes that
    do not (the chain captured around them) — max-autotune used to crash ("accessing tensor output of
    CUDAGraphs that has been overwritten")."""
    device = torch.device("cuda", 0)
    gen, prior, x, kwargs = _inputs(device)
    eager = langevin_posterior(gen, prior, x, **kwargs)
    runner = FastPath.resolve(PerfConfig(compile_mode=mode), device).test_time_runner(8)  # two chunks of 8
    z = langevin_posterior(gen, prior, x, runner=runner, **kwargs)
    again = langevin_posterior(gen, prior, x, runner=runner, **kwargs)
    torch.cuda.synchronize()
    assert GRAPHS.fallback_reason is None, GRAPHS.summary()
    assert torch.equal(z, again) and (z - eager).abs().max() <= 1e-4, (z - eager).abs().max()


def test_a_recorded_chain_reads_weights_updated_in_place(true_fp32):
    device = torch.device("cuda", 0)
    gen, prior, x, kwargs = _inputs(device)
    runner = FastPath.resolve(PerfConfig(), device).test_time_runner(16)
    langevin_posterior(gen, prior, x, runner=runner, **kwargs)  # recorded with the first weights
    with torch.no_grad():
        for p in gen.parameters():
            p.mul_(1.1)  # as an optimizer step does: same storage, new values
    z = langevin_posterior(gen, prior, x, runner=runner, **kwargs)
    eager = langevin_posterior(gen, prior, x, **kwargs)
    assert (z - eager).abs().max() <= 1e-4, (z - eager).abs().max()


def test_out_of_memory_while_recording_halves_the_chain_batch(true_fp32):
    device = torch.device("cuda", 0)
    gen, prior, x, kwargs = _inputs(device)
    kwargs["step_size"] = 0.0987  # a signature of its own: recorded here
    eager = langevin_posterior(gen, prior, x, **kwargs)

    def out_of_memory_above_4(chains):
        if chains > 4:
            raise torch.OutOfMemoryError("injected: out of memory while recording")

    with GRAPHS.hooked(before_record=out_of_memory_above_4):
        z = langevin_posterior(gen, prior, x, runner=FastPath.resolve(PerfConfig(), device).runner(16), **kwargs)
        assert GRAPHS.batch_cap == 4 and (z - eager).abs().max() <= 1e-4


def test_bf16_default_chain_stays_close_to_fp32():
    device = torch.device("cuda", 0)
    gen, prior, x, kwargs = _inputs(device)
    ref = langevin_posterior(gen, prior, x, **kwargs)
    fast = FastPath.resolve(PerfConfig(), device)
    z = langevin_posterior(gen, prior, x, runner=fast.runner(None, torch.bfloat16), **kwargs)
    assert torch.isfinite(z).all() and GRAPHS.fallback_reason is None
    assert (z - ref).norm() / ref.norm() < 0.02


def test_trainer_on_cuda_starts_with_the_captured_compiled_step():
    cmd = [PYTHON, "-m", "lfbm_dist.train", "--config", "configs/test_tiny.yaml", "train.total_kimg=0.032",
           "train.run_dir=runs/gpu_test_trainer", "train.overwrite=true", "train.accumulation_steps=2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "compile=default (one Langevin step) cuda_graphs=one per chain" in out, out[-3000:]
    assert "Langevin chains 16 at a time (learning micro-batch 8)" in out, out[-3000:]
    assert "Langevin chain graphs compiled: 1; no fallback" in out, out[-3000:]  # the grids share the step
    assert "torch.compile failed" not in out and "CUDA graphs were skipped" not in out
