"""Real multi-process training: DDP and DeepSpeed ZeRO-1/2 on 2 gloo ranks, equivalence of batch
splits (with skipped non-finite steps), exact resume after SIGKILL, non-finite guard, checkpoint refusal, export."""

import json
import random
import shutil
import signal
import subprocess
import time

import pytest
import torch
from conftest import PYTHON, ROOT
from launch import command, env, finished_run, free_port, launch_script, run
from launch import ok as _ok

from lfbm_dist import state_schema as schema
from lfbm_dist.export import checkpoint_state_dict, export, load_exported
from lfbm_dist.training.checkpoint import latest, list_complete, read_state

TINY = ["--config", "configs/test_tiny.yaml"]
pytestmark = pytest.mark.slow


# name: (launch, args, Langevin chains at a time, learning micro-batch); CPU auto: one micro-batch
LAYOUTS = {
    "1x8": ("single", ["train.batch_per_gpu=8"], 8, 8),
    "2x4_channels_last": ("ddp2", ["train.batch_per_gpu=4", "perf.channels_last=on"], 4, 4),
    "zero1_2x4": ("zero1", ["train.batch_per_gpu=4"], 4, 4),
    "zero2_2x4": ("zero2", ["train.batch_per_gpu=4"], 4, 4),
    "2x2x2": ("ddp2", ["train.batch_per_gpu=2", "train.accumulation_steps=2"], 2, 2),
    # the chains of both micro-batches of a step as one batch of 4, learning still in micro-batches of 2
    "2x2x2_chain4": ("ddp2", ["train.batch_per_gpu=2", "train.accumulation_steps=2", "perf.chain_batch=4"], 4, 2),
    "zero2_2x2x2_chain4": (
        "zero2",
        ["train.batch_per_gpu=2", "train.accumulation_steps=2", "perf.chain_batch=4"],
        4,
        2,
    ),
}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same 5 steps of global batch 8 on every layout of LAYOUTS, with a snapshot after step 4.
    Two steps must be skipped: step 1's latents are non-finite (the guard before learning) and every
    gradient of step 2 is NaN (the guard before the optimizer, whatever wraps it)."""
    root = tmp_path_factory.mktemp("layouts")
    made = {}
    for name, (kind, extra, _, _) in LAYOUTS.items():
        args = [*TINY, f"train.run_dir={root / name}", "train.total_kimg=0.04", "train.log_every_kimg=0.04"]
        args += ["train.snapshot_every_kimg=0.032", *extra]
        made[name] = (
            root / name,
            _ok(run(kind, *args, warm_ranks=True, LFBM_FAULT_NAN_STEPS="1", LFBM_FAULT_NAN_GRAD_STEPS="2")),
        )
    return made


@pytest.mark.parametrize(
    "name,backend", [("2x4_channels_last", "ddp"), ("zero1_2x4", "deepspeed"), ("zero2_2x4", "deepspeed")]
)
def test_two_rank_backends_train_checkpoint_and_export(tmp_path, layouts, name, backend):
    run_dir, proc = layouts[name]
    assert "2 rank(s)" in proc.stdout
    # two ranks with snapshots and skipped steps, the watchdog and the straggler check on: no false alarm
    assert not any(w in proc.stderr for w in ("has not finished", "stopped responding", "straggler:")), proc.stderr
    ckpts = list_complete(run_dir)
    assert [c.name for c in ckpts] == ["ckpt-000000000032", "ckpt-000000000040"]
    manifest = json.loads((ckpts[-1] / schema.MANIFEST).read_text())  # one format, whoever wrote it
    assert manifest["written_by"]["backend"] == backend and manifest["written_by"]["world_size"] == 2
    assert sorted(p.name for p in ckpts[-1].glob("*.safetensors")) == manifest["shards"]
    assert not list(ckpts[-1].glob("*.bin")) and not (ckpts[-1] / "pytorch_model").exists()
    assert {p.name for p in ckpts[-1].glob(schema.DATA_STATE_GLOB)} == {schema.data_state_file(r) for r in (0, 1)}
    model, cfg = load_exported(export(ckpts[-1], tmp_path / "export").parent)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_channels_last_on_under_deepspeed_is_refused_in_one_line(tmp_path):
    """DeepSpeed views every parameter as contiguous bytes; NHWC weights would crash inside it."""
    proc = run("zero2", *TINY, f"train.run_dir={tmp_path / 'r'}", "perf.channels_last=on")  # cold: see launch.launched
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: perf.channels_last=on")]
    assert lines and "cannot run under DeepSpeed" in lines[0], proc.stderr[-3000:]


def test_global_batch_split_equivalence_and_the_non_finite_guards(layouts):
    """1 rank × 8, 2 ranks × 4 under DDP (channels-last weights and images), ZeRO-1 and ZeRO-2, 2 ranks
    × 2 × accumulation 2, and DDP and ZeRO-2 2 × 2 × accumulation 2 whose chains run as one chain
    batch of 4 per rank: same parameters, and every layout skipped steps 1 and 2 alike (counted, in
    TensorBoard too)."""
    from tb_read import read_events, scalar_series

    params = {}
    for name, (run_dir, proc) in layouts.items():
        _, _, chains, learning = LAYOUTS[name]
        assert f"Langevin chains {chains} at a time (learning micro-batch {learning})" in proc.stdout, name
        state = schema.trainer_state(run_dir)
        assert state[schema.SKIPPED_STEPS] == 2 and state[schema.STEPS_DONE] == 5, (name, state)
        assert scalar_series(read_events(run_dir / "tensorboard"), "skipped_steps")[-1][1] == 2.0, name
        params[name] = checkpoint_state_dict(latest(run_dir))
    ref = params["1x8"]
    for name, state in params.items():
        for key, tensor in ref.items():
            assert torch.isfinite(state[key]).all(), (name, key)
            rel = (state[key] - tensor).norm() / tensor.norm().clamp_min(1e-12)
            assert rel <= 1e-5, (name, key, float(rel))
    # and they did train: Adam took the 3 finite steps on non-zero gradients for every parameter (so
    # the equal parameters above are not the untouched initialisation)
    full = read_state(latest(layouts["1x8"][0]))
    steps = {k: float(v) for k, v in full.items() if k.startswith("step/")}
    assert steps and set(steps.values()) == {3.0}, steps
    params = [k.removeprefix("step/") for k in steps]
    assert set(ref) == {*params, *(k.removeprefix("buffer/") for k in full if k.startswith("buffer/"))}
    assert all(full[f"exp_avg/{k}"].abs().max() > 0 for k in params), [
        k for k in params if not full[f"exp_avg/{k}"].any()
    ]


def _assert_bitwise_equal(a_dir, b_dir):
    a, b = latest(a_dir), latest(b_dir)
    assert a.name == b.name
    sa, sb = read_state(a), read_state(b)  # weights, buffers and Adam state
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ta, tb = (schema.trainer_state(d) for d in (a, b))
    assert ta == tb


RESUME_ARGS = [*TINY, "train.total_kimg=0.128", "train.snapshot_every_kimg=0.064", "langevin.num_steps=5"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run both resume tests compare with (read only)."""
    return finished_run(tmp_path_factory.mktemp("straight") / "run", *RESUME_ARGS)


def test_exact_resume_after_sigkill_at_a_random_moment(tmp_path, straight):
    """2N steps straight vs. killed (SIGKILL) at a random moment after step N, then resumed."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        command("single", *RESUME_ARGS, f"train.run_dir={killed}"),
        cwd=ROOT,
        env=env(LFBM_FAULT_STEP_SLEEP="0.25"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while latest(killed) is None and time.time() < deadline:
        time.sleep(0.05)
    assert latest(killed) is not None and latest(killed).name == "ckpt-000000000064"
    time.sleep(random.uniform(0.0, 0.8))  # somewhere inside steps N+1 … 2N (4 × 0.25 s)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert latest(killed).name == "ckpt-000000000064"
    _ok(run("single", *RESUME_ARGS, f"train.run_dir={killed}", "train.resume=auto"))
    _assert_bitwise_equal(straight, killed)


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, straight):
    killed = tmp_path / "killed"
    proc = run("single", *RESUME_ARGS, f"train.run_dir={killed}", LFBM_FAULT_KILL_IN_SAVE="128")
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "checkpoints/ckpt-000000000128.tmp").is_dir()  # the interrupted write
    assert latest(killed).name == "ckpt-000000000064"  # previous one still the newest usable
    _ok(run("single", *RESUME_ARGS, f"train.run_dir={killed}", "train.resume=auto"))
    assert not (killed / "checkpoints/ckpt-000000000128.tmp").exists()
    _assert_bitwise_equal(straight, killed)


def test_consecutive_non_finite_steps_stop_the_run_at_the_bound(tmp_path):
    proc = run(
        "single",
        *TINY,
        f"train.run_dir={tmp_path / 'stop'}",
        "train.max_consecutive_skips=3",
        LFBM_FAULT_NAN_STEPS="1,2,3",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: 3 consecutive non-finite steps at step 3; stopping (lower the learning rates or the Langevin step size)"
    )


def test_resume_refuses_other_config_and_truncated_checkpoint(tmp_path, straight):
    run_dir = tmp_path / "r"
    shutil.copytree(straight, run_dir)
    longer = [*RESUME_ARGS, f"train.run_dir={run_dir}", "train.resume=auto", "train.total_kimg=0.256"]
    proc = run("single", *longer, "generator.nz=10")
    assert proc.returncode == 2
    assert "checkpoint is from another model config (generator.nz differs)" in proc.stderr.strip().splitlines()[-1]
    weights = latest(run_dir) / "state-00000-of-00001.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    proc = run("single", *longer)
    assert proc.returncode == 2 and "cannot load checkpoint" in proc.stderr.strip().splitlines()[-1]


def test_silent_single_process_cpu_launch_is_refused(tmp_path):
    from launch import ACCELERATE

    proc = subprocess.run(
        [
            ACCELERATE,
            "launch",
            "--cpu",
            "--num_processes",
            "2",
            "lfbm_dist/train.py",
            *TINY,
            f"train.run_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
    )
    assert proc.returncode != 0
    assert "launcher asked for 2 processes but the process group has 1" in proc.stderr


@pytest.mark.parametrize("kind", ["ddp2", "zero2"])
def test_posterior_inference_uses_no_collectives(tmp_path, kind):
    proc = launch_script(kind, "tests/dist_collectives.py", warm_ranks=True, LFBM_TEST_OUT=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    for r in rows:
        assert r["inference"] == 0, r
        assert r["inference_compiled"] == 0 and r["compile_fallback"] is None, r
        assert r["learning"] > 0, r


_GROUP_ENDS_WITH_ITS_THREADS = """
import json, os, sys
from datetime import timedelta
import torch, torch.distributed as dist
from lfbm_dist.config import load_config
from lfbm_dist.training.build import build_model
from lfbm_dist.training.engine.launch import join_process_group
assert "torch._dynamo" not in sys.modules  # started cold, as a user's rank starts
join_process_group("gloo", timedelta(seconds=60))
build_model(load_config("configs/test_tiny.yaml"))  # its meta-device size check imports torch._dynamo
buf = torch.ones(64)
dist.all_reduce(buf)
dist.barrier()
dist.destroy_process_group()
print(json.dumps(sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))))
"""


def test_destroying_the_group_joins_its_gloo_threads_so_a_finished_rank_cannot_abort_at_exit():
    # A gloo worker thread still alive when the interpreter finalizes may be releasing the last
    # collective's tensor and abort the finished process (exit −6, a race). Deterministic here: after
    # destroy_process_group no worker thread of the group may remain.
    proc = _ok(
        subprocess.run(
            [PYTHON, "-c", _GROUP_ENDS_WITH_ITS_THREADS],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env=env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"),
        )
    )
    threads = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [t for t in threads if "gloo" in t], threads
