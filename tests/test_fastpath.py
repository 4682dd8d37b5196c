"""The GPU fast path (lfbm_dist/training/fastpath.py, lfbm_dist/inference/chain.py) keeps the math:
compiled and channels-last chains against the eager chain and against the analytic posterior, the
trainer end to end, and the clean fallback when the compiler is missing. Real torch.compile
(Inductor, C++ backend on CPU)."""

import os

import pytest
import torch
from conftest import ROOT, randomize_
from helpers_models import LinearGenerator
from test_langevin import _analytic_posterior, _run_chains

from lfbm_dist.config import ConfigError, PerfConfig, load_config
from lfbm_dist.inference import (
    GRAPHS,
    ChainRunError,
    ChainRunner,
    GraphUse,
    frozen,
    graph_use,
    langevin_posterior,
    posterior_step,
    posterior_steps,
)
from lfbm_dist.models import FlowPrior, build_generator
from lfbm_dist.training.fastpath import FastPath, chain_batch_from_memory, chain_bytes_per_sample


def test_auto_means_on_for_cuda_and_off_on_cpu():
    cpu = FastPath.resolve(PerfConfig(), torch.device("cpu"))
    assert (cpu.channels_last, cpu.cudnn_benchmark, cpu.compile_mode, cpu.capture) == (False, False, None, False)
    assert cpu.runner(4) == ChainRunner(batch=4) and cpu.chain_batch(4, 16, build_generator("tiny16", nz=8), 8) == 4
    # The decision of docs/PERFORMANCE.md: by default on CUDA one Langevin step is compiled (Inductor's
    # default kernels) and each chain is captured around it as one CUDA graph (one replay, no host trip).
    gpu = FastPath.resolve(PerfConfig(), torch.device("cuda", 0))
    assert (gpu.channels_last, gpu.cudnn_benchmark, gpu.compile_mode, gpu.capture) == (True, True, "default", True)
    train = gpu.runner(64, torch.bfloat16)
    assert (train.compile_mode, train.batch, train.channels_last, train.capture) == ("default", 64, True, True)
    assert train.autocast_dtype == torch.bfloat16 and gpu.test_time_runner(100).autocast_dtype is None
    assert "compile=default (one Langevin step) cuda_graphs=one per chain" in gpu.describe()
    preset = load_config(ROOT / "configs" / "celebahq256.yaml")
    hq = FastPath.resolve(preset.perf, torch.device("cuda", 0))
    assert (hq.compile_mode, hq.capture, hq.chain_batch_setting) == ("default", True, 0)
    # Modes that record CUDA graphs themselves (CUDA-graph trees, a replay per step) are never captured.
    trees = FastPath.resolve(PerfConfig(compile_mode="max-autotune"), torch.device("cuda", 0))
    assert (trees.compile_mode, trees.capture) == ("max-autotune", False)
    assert "cuda_graphs=one per step (the mode's own)" in trees.describe()
    with pytest.raises(ConfigError, match="records a CUDA graph per step itself"):
        FastPath.resolve(PerfConfig(compile_mode="reduce-overhead", cuda_graphs="on"), torch.device("cuda", 0))
    off = FastPath.resolve(PerfConfig(cuda_graphs="off"), torch.device("cuda", 0))
    assert (off.compile_mode, off.capture) == ("default", False)
    # CUDA graphs do not exist on CPU: asking for them there compiles plainly rather than pretending.
    forced = FastPath.resolve(
        PerfConfig(channels_last="on", cudnn_benchmark="on", compile="on", compile_mode="reduce-overhead"),
        torch.device("cpu"),
    )
    assert (forced.channels_last, forced.cudnn_benchmark, forced.compile_mode, forced.capture) == (
        True, False, "default", False)  # fmt: skip
    # DeepSpeed crashes on NHWC parameters: auto stays off (and says so), an explicit on is refused.
    deepspeed = FastPath.resolve(PerfConfig(), torch.device("cuda", 0), deepspeed=True)
    assert not deepspeed.channels_last and "off under DeepSpeed" in deepspeed.describe()
    with pytest.raises(ConfigError, match="cannot run under DeepSpeed"):
        FastPath.resolve(PerfConfig(channels_last="on"), torch.device("cpu"), deepspeed=True)


@pytest.mark.parametrize(
    "mode,device,capture,expected",
    [
        # Inductor's own table says which modes record CUDA graphs (CUDA-graph trees): each step is a
        # replay, marked as a new step and its outputs copied before the next replay overwrites them.
        ("reduce-overhead", "cuda", True, GraphUse(trees=True)),
        ("max-autotune", "cuda", True, GraphUse(trees=True)),  # max-autotune records them too
        ("max-autotune", "cuda", False, GraphUse(trees=True)),
        # Modes that record none: the chain is captured as one explicit CUDA graph (outputs copied out).
        ("default", "cuda", True, GraphUse(capture=True)),
        ("max-autotune-no-cudagraphs", "cuda", True, GraphUse(capture=True)),
        ("default", "cuda", False, GraphUse()),  # perf.cuda_graphs=off
        # No CUDA, or eager: no graphs, nothing marked or copied.
        ("reduce-overhead", "cpu", True, GraphUse()),
        ("max-autotune", "cpu", True, GraphUse()),
        (None, "cuda", True, GraphUse()),
    ],
)  # fmt: skip
def test_the_cuda_graph_rule_follows_from_whether_a_mode_records_graphs(mode, device, capture, expected):
    use = graph_use(mode, device, capture)
    assert use == expected
    assert use.mark_steps == expected.trees and use.copy_outputs == (expected.trees or expected.capture)


def test_deterministic_kernels_turn_autotuning_off_and_the_deterministic_flags_on(monkeypatch):
    """perf.deterministic (the GPU proof's resume section): cuDNN autotuning picks kernels anew in every
    process, so it is off; apply() sets torch's deterministic flags and cuBLAS's fixed workspace."""
    det = FastPath.resolve(PerfConfig(deterministic=True), torch.device("cuda", 0))
    assert (det.cudnn_benchmark, det.compile_mode) == (False, "default") and "deterministic=on" in det.describe()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cpu = FastPath.resolve(PerfConfig(deterministic=True), torch.device("cpu"))
    try:
        cpu.apply(torch.nn.Linear(2, 2))
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_chain_batch_from_memory():
    # 4 micro-batches of 32 per step; 1 MB a chain: all 128 fit in 256 MB at half, 64 in 100 MB, one micro in 10 MB.
    mb = 1 << 20
    assert chain_batch_from_memory(128, 32, mb, 256 * mb) == 128
    assert chain_batch_from_memory(128, 32, mb, 100 * mb) == 32  # 50 fit: 64 does not, 32 does
    assert chain_batch_from_memory(128, 32, mb, 140 * mb) == 64
    assert chain_batch_from_memory(96, 32, mb, 140 * mb) == 32  # 3 micro-batches: 96 or 32 (48 is not whole)
    assert chain_batch_from_memory(128, 32, mb, 1 * mb) == 32  # never below one micro-batch
    # the estimate grows with the generator's activations (meta device: no memory, no compute)
    small, big = (chain_bytes_per_sample(build_generator(a, nz=8), 8) for a in ("tiny16", "tiny32"))
    assert 0 < small < big
    # Inductor's plan for a bf16 step needs less per chain (calibrated in docs/PERFORMANCE.md)
    assert chain_bytes_per_sample(build_generator("tiny32", nz=8), 8, torch.bfloat16) < big


def test_yaml_on_off_read_as_switches(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("perf: {compile: on, channels_last: off}\n")  # YAML 1.1 makes these booleans
    cfg = load_config(path)
    assert (cfg.perf.compile, cfg.perf.channels_last) == ("on", "off")
    with pytest.raises(ConfigError, match="perf.compile_mode must be one of"):
        load_config(path, ["perf.compile_mode=fastest"])


def _chain_inputs(batch=6, steps=5):
    torch.manual_seed(0)
    gen = randomize_(build_generator("tiny16", nz=8, ngf=4), 0.05)
    prior = randomize_(FlowPrior(8, num_steps=2, hidden=8), 0.05, seed=1)
    x = torch.rand(batch, 3, 16, 16) * 2 - 1
    mask = (torch.rand(batch, 1, 16, 16) > 0.3).float()
    z_init, noise = torch.randn(batch, 8), torch.randn(batch, steps, 8)
    return gen, prior, x, dict(num_steps=steps, step_size=0.1, sigma=0.3, mask=mask, z_init=z_init, noise=noise)


def _watch_weight_grads(*modules):
    params = [p for m in modules for p in m.parameters()]
    fired = []
    for p in params:
        p.grad = torch.full_like(p, 7.0)
        p.register_hook(lambda g: fired.append(1))
    return lambda: fired == [] and all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in params)


def test_one_compiled_step_serves_every_chain_length_and_matches_the_eager_step_loop():
    """posterior_step (torch.func.grad) compiled once — 5-step and 7-step chains, 6 chains as chain
    batches of 4 (the last padded, in channels-last as the rest) — equals the eager step loop within
    1e-5 in float32, with no weight gradient computed or touched, and builds exactly ONE graph,
    whatever K."""
    gen, prior, x, kwargs = _chain_inputs()
    eager = langevin_posterior(gen, prior, x, **kwargs)
    with frozen(gen, prior), torch.no_grad():  # the traceable step itself, uncompiled, K times: the same chain
        z = kwargs["z_init"]
        for k in range(5):
            z, _ = posterior_step(gen, prior, x, z, kwargs["noise"][:, k], 0.1, 0.3, kwargs["mask"], None)
        args = (gen, prior, x, kwargs["z_init"], kwargs["noise"], 5, 0.1, 0.3, kwargs["mask"], None)
        assert (z - posterior_steps(*args)[0]).abs().max() <= 1e-5

    fast = FastPath.resolve(PerfConfig(channels_last="on", compile="on"), torch.device("cpu"))
    fast.apply(gen)
    untouched = _watch_weight_grads(gen, prior)
    runner, before = fast.test_time_runner(4), GRAPHS.graphs_compiled
    z, stats = langevin_posterior(gen, prior, x, runner=runner, return_stats=True, **kwargs)
    assert GRAPHS.fallback_reason is None and runner.compile_mode == "default"  # really compiled
    assert GRAPHS.graphs_compiled - before == 1  # one step; the padded chunk met the same graph
    assert untouched()
    assert (z - eager).abs().max() <= 1e-5, (z - eager).abs().max()
    assert torch.isfinite(stats["langevin_grad_norm"]) and stats["langevin_grad_norm"] > 0
    # A longer chain is more calls of the same graph; noise from a generator is drawn up front in the
    # step loop's order: the same chains, no new graph.
    no_noise = {k: v for k, v in kwargs.items() if k not in ("noise", "num_steps")}
    ref = langevin_posterior(gen, prior, x, num_steps=7, rng=torch.Generator().manual_seed(3), **no_noise)
    up_front = langevin_posterior(
        gen, prior, x, num_steps=7, rng=torch.Generator().manual_seed(3), runner=runner, **no_noise
    )
    assert (up_front - ref).abs().max() <= 1e-5
    assert GRAPHS.graphs_compiled - before == 1, GRAPHS.summary()


@pytest.mark.parametrize(
    "failure",
    [torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
     RuntimeError("CUDA error: misaligned address")],
)  # fmt: skip
def test_a_cuda_error_while_a_graph_is_made_stops_the_chain_instead_of_falling_back(failure):
    """A sticky CUDA error is not a compiler failure: the chain stops with that cause (ChainRunError,
    one line), and no process-wide switch to the eager loop happens. Raised where a graph is recorded
    (the hook before it), so nothing compiles here."""
    gen, prior, x, kwargs = _chain_inputs()
    kwargs["step_size"] = 0.0123  # a signature no other test has met: its graph would be made here

    def fail(chains):
        raise failure

    fallback = GRAPHS.fallback_reason
    with GRAPHS.hooked(before_record=fail), pytest.raises(ChainRunError, match="failed while running: .*CUDA error"):
        langevin_posterior(gen, prior, x, runner=ChainRunner(compile_mode="default", batch=4), **kwargs)
    assert GRAPHS.fallback_reason == fallback  # not taken for a compiler failure


def test_batch_norm_generator_in_training_keeps_the_step_loop():
    """BatchNorm in training mode couples the chains of a batch and mutates buffers: neither a
    functional graph nor a re-batching is the same math, so the step loop runs (bitwise equal)."""
    torch.manual_seed(0)
    gen = build_generator("mnist28", nz=8, ngf=4, image_channels=1).train()
    prior = FlowPrior(8, num_steps=2, hidden=8)
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    kwargs = dict(num_steps=3, step_size=0.1, sigma=0.3, z_init=torch.randn(6, 8), noise=torch.randn(6, 3, 8))
    state = {k: v.clone() for k, v in gen.state_dict().items()}
    ref = langevin_posterior(gen, prior, x, **kwargs)
    gen.load_state_dict(state)
    before = GRAPHS.graphs_compiled
    z = langevin_posterior(gen, prior, x, runner=ChainRunner(compile_mode="default", batch=4), **kwargs)
    assert torch.equal(z, ref) and GRAPHS.graphs_compiled == before  # nothing compiled, nothing re-batched
    # in evaluation mode (running statistics) the chains are independent again: they may be re-batched
    gen.eval()
    ref = langevin_posterior(gen, prior, x, **kwargs)
    z = langevin_posterior(gen, prior, x, runner=ChainRunner(batch=4), **kwargs)
    assert (z - ref).abs().max() <= 1e-5


def test_compiled_chain_matches_analytic_posterior():
    """The core test's tolerances (mean 0.05, covariance 10 %) hold for the compiled chain: 1,500 calls
    of the one compiled step, 4,000 chains."""
    torch.manual_seed(0)
    gen = LinearGenerator(nz=3, scale=0.6, seed=1)
    sigma = 1.0
    x_one = gen(torch.randn(1, 3, dtype=torch.float64))[0] + sigma * torch.randn(3, 2, 2, dtype=torch.float64)
    mean, cov = _analytic_posterior(gen.weight.detach(), x_one.flatten(), sigma)
    fast, before = FastPath.resolve(PerfConfig(compile="on"), torch.device("cpu")), GRAPHS.graphs_compiled
    z = _run_chains(gen, x_one, sigma, runner=fast.runner(None))
    assert GRAPHS.fallback_reason is None and GRAPHS.graphs_compiled - before == 1
    assert (z.mean(0) - mean).abs().max() < 0.05
    assert torch.linalg.norm(torch.cov(z.T) - cov) / torch.linalg.norm(cov) < 0.10


def _train(run_dir, *overrides, env=None):
    """One training run; with `env` (the no-compiler case) it starts cold, so Inductor reads that
    environment at its import."""
    from launch import module

    args = ["--config", "configs/test_tiny.yaml", f"train.run_dir={run_dir}", "train.total_kimg=0.032", *overrides]
    proc = module("lfbm_dist.train", *args, cold=env is not None, **(env or {}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from lfbm_dist.training.checkpoint import model_state_dict, read_state

    (ckpt,) = (run_dir / "checkpoints").iterdir()
    return proc, model_state_dict(read_state(ckpt))


@pytest.mark.slow
def test_trainer_without_a_compiler_falls_back_to_exactly_the_eager_run(tmp_path):
    """(A compiled run matching the eager one: tests/test_chain_graphs.py.)"""
    _, eager = _train(tmp_path / "eager")
    # No working C++ compiler: one line says so, and the run is the eager run exactly.
    env = {"CXX": "/nonexistent/g++", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    proc, fallback = _train(tmp_path / "fallback", "perf.compile=on", env=env)
    lines = [line for line in proc.stderr.splitlines() if "torch.compile failed" in line]
    assert len(lines) == 1 and "C++ compiler" in lines[0] and "runs eagerly" in lines[0], proc.stderr[-2000:]
    for key, value in eager.items():
        assert torch.equal(fallback[key], value), key
