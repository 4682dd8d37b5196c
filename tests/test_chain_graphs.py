"""The compiled Langevin chains meet a known set of graphs, each under the fallback, kept in a compile
cache that a restarted process reads; Inductor freezing is refused. Real runs of the entry points,
with torch.compile on (CPU Inductor: a C++ compiler); the compiled unit is one Langevin step, whatever K."""

import re

import pytest
import torch
from launch import finished_run, module

from lfbm_dist.config import ConfigError, PerfConfig
from lfbm_dist.training.checkpoint import model_state_dict, read_state
from lfbm_dist.training.fastpath import FastPath

# Digits with a held-out class (anomaly) and centre occlusion (learning from occluded data, inpainting):
# every metric has its data. K = 2 in training, 3 at test time, one Glow step (fewer kernels).
RUN = [
    "--config", "configs/test_tiny.yaml", "data.dataset=digits", "generator.image_channels=1",
    "data.heldout_class=9", "data.occlusion=center", "train.batch_per_gpu=8", "train.total_kimg=0.016",
    "langevin.test_num_steps=3", "prior.flow_steps=1",
]  # fmt: skip
EVAL = [
    "--metrics", "fid,recon,inpaint,anomaly,aggpost,recovery", "eval.fid_batch=8", "eval.fid_num_samples=8",
    "eval.fid_ref_samples=8", "eval.recon_samples=6", "eval.inpaint_samples=6", "eval.inpaint_completions=2",
]  # fmt: skip
# Channels-last images and a padded last chain batch (6 of 8) are what used to compile unplanned graphs.
FAST = ["perf.compile=on", "perf.channels_last=on"]


# The environment's TORCHINDUCTOR_CACHE_DIR (the suite's) would win over perf.compile_cache=auto: unset
# it, so each run uses its own RUN_DIR/compile_cache, as on a cluster; and a new TMPDIR for each
# process moves torch's per-machine folder (/tmp/torchinductor_$USER) away, as on another node.
def _own_cache(tmp_path, name: str) -> dict:
    (tmp_path / name).mkdir()
    return {"TORCHINDUCTOR_CACHE_DIR": None, "TMPDIR": str(tmp_path / name)}


def _graphs_line(text: str) -> str:
    (line,) = [ln for ln in text.splitlines() if "Langevin chain graphs compiled" in ln]
    return line


def _weights(run_dir):
    *_, newest = sorted((run_dir / "checkpoints").iterdir())
    return model_state_dict(read_state(newest))


@pytest.mark.slow
def test_a_run_and_its_evaluation_compile_the_predicted_graphs_and_a_restart_reads_them_back(tmp_path):
    run_dir = tmp_path / "run"
    # A cold process with TORCHINDUCTOR_CACHE_DIR unset: the run's own cache, not the folder torch's
    # import would have named (it sets the variable to its per-machine default).
    proc = module("lfbm_dist.train", *RUN, f"train.run_dir={run_dir}", *FAST, cold=True, **_own_cache(tmp_path, "t1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    # Training: the occluded batch's chains (mask) and, at the end, the image grid's reconstruction
    # chains (no mask, the training's batch and precision): 2 step graphs, whatever K, counted by
    # torch's own counter, all compiled here (an empty cache).
    assert f"compile cache: {run_dir / 'compile_cache' / 'rank0'}" in out
    assert re.search(r"Langevin chain graphs compiled: 2; no fallback$", _graphs_line(out)), _graphs_line(out)
    assert any((run_dir / "compile_cache").rglob("*.py")), "Inductor wrote no code to the run's compile cache"
    assert not any((tmp_path / "t1").rglob("*.py")), "the per-machine folder was used"
    # The compiled chains are the eager step loop's math: the same weights after the step.
    eager = finished_run(tmp_path / "eager", *RUN, "perf.compile=off")
    for key, value in _weights(eager).items():
        assert torch.allclose(_weights(run_dir)[key], value, rtol=1e-4, atol=1e-5), key

    # A restarted process (a requeue on another node: resume one step further) finds the training
    # graph in the run's cache — Inductor's code and AOTAutograd's trace (torch's own counters) —;
    # the compiler "fails" at its second graph (the grid's), which costs one line and the eager
    # loop, not the run.
    proc = module(
        "lfbm_dist.train", *RUN, f"train.run_dir={run_dir}", *FAST, "train.total_kimg=0.024",
        "train.resume=auto", LFBM_FAULT_COMPILE_FAIL_AT="2", cold=True, **_own_cache(tmp_path, "t2"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = _graphs_line(proc.stdout + proc.stderr)
    assert re.search(
        r"compiled: 1; fell back to eager: InjectedFailure: injected compiler failure at chain graph 2; "
        r"1 of them from the compile cache \(1 with AOTAutograd's work cached too\)$",
        line,
    ), line
    warnings = [ln for ln in proc.stderr.splitlines() if "torch.compile failed at chain graph 2" in ln]
    assert len(warnings) == 1 and "Langevin runs eagerly" in warnings[0], proc.stderr[-2000:]
    assert _weights(run_dir)  # the step after the fallback was checkpointed

    # Evaluation with every metric: reconstruction and aggregated posterior share a graph (no mask),
    # inpainting and recovery share one (mask), anomaly scores without noise: 3 graphs (FID sampling
    # is ancestral, no chain), read from the run's cache where training built the same one.
    own = _own_cache(tmp_path, "t3")
    proc = module("lfbm_dist.evaluate", "--run", str(run_dir), *EVAL, *FAST, timeout=900, **own)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = _graphs_line(proc.stdout + proc.stderr)
    assert re.search(
        r"Langevin chain graphs compiled: 3; no fallback(; [123] of them from the compile cache.*)?$", line
    ), line
    assert "torch.compile failed" not in proc.stderr

    # Out of memory while a chain graph of 8 chains is recorded (injected where a real one would be):
    # one warning, the chain batch halved to 4 for the rest of the process, the run finishes — with
    # the eager run's weights.
    halved = tmp_path / "halved"  # whole images: the grid's chains meet the training's one graph
    proc = module("lfbm_dist.train", *RUN, f"train.run_dir={halved}", *FAST, "data.occlusion=none",
                  LFBM_FAULT_RECORD_OOM_ABOVE="4")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (warning,) = [ln for ln in proc.stderr.splitlines() if "out of memory while recording" in ln]
    assert "graph of 8 chains; the chain batch is halved to 4" in warning, warning
    assert "chain batch halved to 4" in _graphs_line(proc.stdout + proc.stderr)
    eager = finished_run(tmp_path / "eager_whole", *RUN, "perf.compile=off", "data.occlusion=none")
    for key, value in _weights(eager).items():
        assert torch.allclose(_weights(halved)[key], value, rtol=1e-4, atol=1e-5), key


def test_inductor_freezing_is_refused_with_compile_on_and_allowed_without():
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        with pytest.raises(ConfigError, match="Inductor freezing is on.*unset TORCHINDUCTOR_FREEZING"):
            FastPath.resolve(PerfConfig(compile="on"), torch.device("cpu"))
        assert FastPath.resolve(PerfConfig(compile="off"), torch.device("cpu")).compile_mode is None


def test_inductor_freezing_from_the_environment_stops_training_in_one_line(tmp_path):
    proc = module(
        "lfbm_dist.train", "--config", "configs/test_tiny.yaml", f"train.run_dir={tmp_path / 'run'}",
        "perf.compile=on", cold=True, TORCHINDUCTOR_FREEZING="1",
    )  # fmt: skip
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "Inductor freezing is on (TORCHINDUCTOR_FREEZING=1)" in errors[0], proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
