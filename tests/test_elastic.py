"""Elastic resume, with real processes: a run stopped on one layout continues on another (ranks,
DataLoader workers, DDP or ZeRO) with the same global batches, sample by sample, and the same model
and Adam state — so its trajectory does not depend on the change."""

import json

import pytest
import torch
from conftest import stopped_at
from launch import ok as _ok
from launch import run
from safetensors.torch import load_file
from shard_helpers import write_shards

from lfbm_dist import state_schema as schema
from lfbm_dist.export import checkpoint_state_dict
from lfbm_dist.training.checkpoint import latest, read_state

pytestmark = pytest.mark.slow
TINY = ["--config", "configs/test_tiny.yaml"]
KIND = {1: "single", 2: "ddp2", 4: "ddp4"}


def _global_batches(keys_dir) -> dict[int, list[str]]:
    """step -> the global batch's keys in global sample order (whatever ranks and micro-batches read them)."""
    rows = [json.loads(line) for f in sorted(keys_dir.glob("keys_rank*.jsonl")) for line in f.read_text().splitlines()]
    steps: dict[int, list[tuple[int, str]]] = {}
    for r in rows:
        steps.setdefault(r["step"], []).extend(zip(r["positions"], r["keys"]))
    return {s: [k for _, k in sorted(pairs)] for s, pairs in steps.items()}


def _per_rank_counts(keys_dir) -> list[int]:
    return [len(f.read_text().splitlines()) for f in sorted(keys_dir.glob("keys_rank*.jsonl"))]


def _assert_close(a: dict, b: dict, tol: float = 1e-5):
    for key, ref in a.items():
        rel = (b[key] - ref).norm() / ref.norm().clamp_min(1e-12)
        assert rel <= tol, (key, float(rel))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("elastic")
    write_shards(folder / "s", [13, 11, 17, 9, 14], size=16)  # 64 samples: 8 global batches of 8 per epoch
    return f"{folder}/s/train-{{000000..000004}}.tar"


def _common(shards, total_kimg):
    return [
        *TINY,
        "data.source=shards",
        f"data.shards={shards}",
        "data.resolution=16",
        "data.shuffle_buffer=4",
        f"train.total_kimg={total_kimg}",
        "train.log_every_kimg=0.2",
        "langevin.num_steps=2",
    ]


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory, shards):
    """Per starting layout, once: 15 uninterrupted steps (epoch 0 and most of epoch 1) with a snapshot
    every 4 steps and each step's global batch keys. The resume tests stop it at step 4's snapshot
    (mid-epoch 0) and continue on another layout; they compare with the rest of this same run."""
    made = {}

    def get(world: int, workers: int, streams: list[str]):
        key = (world, workers, tuple(streams))
        if key not in made:
            straight = tmp_path_factory.mktemp(f"straight{world}x{workers}") / "run"
            (straight / "keys").mkdir(parents=True)
            _ok(
                run(
                    KIND[world],
                    *_common(shards, 0.12),
                    *streams,
                    f"train.run_dir={straight}",
                    f"train.batch_per_gpu={8 // world}",
                    f"data.num_workers={workers}",
                    "train.snapshot_every_kimg=0.032",
                    "train.keep_snapshots=8",
                    warm_ranks=True,
                    LFBM_TEST_KEYS_DIR=str(straight / "keys"),
                )
            )
            made[key] = straight
        return made[key]

    return get


@pytest.mark.parametrize(
    "before,after",
    [((1, 2), (2, 1)), ((2, 1), (1, 1)), ((2, 1), (4, 1))],
    ids=["1x2-to-2x1", "2x1-to-1x1", "2x1-to-4x1"],
)
def test_resume_on_another_layout_continues_with_the_same_global_batches(tmp_path, shards, layout_runs, before, after):
    (w0, k0), (w1, k1) = before, after
    streams = ["data.virtual_streams=4"] if w1 == 4 else []
    straight = layout_runs(w0, k0, streams)
    resumed = stopped_at(straight, 32, tmp_path / "resumed")  # stopped mid-epoch 0, at step 4
    (resumed / "keys").mkdir()
    proc = _ok(
        run(
            KIND[w1],
            *_common(shards, 0.12),
            f"train.run_dir={resumed}",
            f"train.batch_per_gpu={8 // w0}",
            "train.resume=auto",
            f"data.num_workers={k1}",
            warm_ranks=True,
            LFBM_TEST_KEYS_DIR=str(resumed / "keys"),
        )
    )
    assert "resumed from ckpt-000000000032" in proc.stdout
    assert f"note: global batch 8 on {w1} rank(s)" in proc.stderr  # batch_per_gpu × accumulation adapted
    a = _global_batches(straight / "keys")
    b = {**{s: keys for s, keys in a.items() if s < 4}, **_global_batches(resumed / "keys")}
    assert sorted(b) == sorted(a) == list(range(15))
    assert all(b[s] == a[s] for s in a)  # the same samples, in the same global order, step by step
    epoch0 = [k for s in range(8) for k in b[s]]
    assert len(epoch0) == len(set(epoch0)) == 64  # every sample of the epoch once
    counts = _per_rank_counts(resumed / "keys")
    assert len(counts) == w1 and len(set(counts)) == 1  # equal batch counts per rank
    _assert_close(checkpoint_state_dict(latest(straight)), checkpoint_state_dict(latest(resumed)))


def test_a_layout_the_plan_cannot_serve_is_refused_with_the_ones_that_work(tmp_path, shards, layout_runs):
    stopped = stopped_at(layout_runs(2, 1, []), 32, tmp_path / "r")  # 2 ranks × 1 worker: 2 streams
    proc = run("ddp4", *_common(shards, 0.12), f"train.run_dir={stopped}", "train.batch_per_gpu=4", "train.resume=auto")
    assert proc.returncode != 0
    line = next(ln for ln in proc.stderr.splitlines() if "error: data plan" in ln)
    assert "2 virtual streams cannot be split evenly over 4 rank(s)" in line and "1×{1,2} 2×{1}" in line, line


# ------------------------------------------------------------------------------ model and Adam state


STATE_ARGS = [*TINY, "train.log_every_kimg=0.08", "langevin.num_steps=2", "train.snapshot_shard_mb=0.02"]


@pytest.fixture(scope="module")
def source_runs(tmp_path_factory):
    """Per source backend, once: the uninterrupted run of 10 steps, with a snapshot after step 5 (kimg
    0.04) that the tests stop it at."""
    made = {}

    def get(source: str):
        if source not in made:
            straight = tmp_path_factory.mktemp(source) / "straight"
            _ok(
                run(
                    source,
                    *STATE_ARGS,
                    "train.total_kimg=0.08",
                    "train.snapshot_every_kimg=0.04",
                    f"train.run_dir={straight}",
                    "train.batch_per_gpu=4",
                    warm_ranks=True,
                )
            )
            made[source] = straight
        return made[source]

    return get


@pytest.mark.parametrize(
    "source,target", [("zero2", "zero2_1"), ("zero2", "zero2_4"), ("ddp2", "zero2"), ("zero2", "ddp2")]
)
def test_optimizer_state_moves_across_world_sizes_and_backends(tmp_path, source_runs, source, target):
    world = {"zero2_1": 1, "zero2_4": 4}.get(target, 2)
    straight = source_runs(source)
    moved = stopped_at(straight, 40, tmp_path / "moved")
    dump = tmp_path / "loaded"
    _ok(
        run(
            target,
            *STATE_ARGS,
            "train.total_kimg=0.08",
            f"train.run_dir={moved}",
            f"train.batch_per_gpu={8 // world}",
            "train.resume=auto",
            warm_ranks=True,
            LFBM_TEST_DUMP_LOADED=str(dump),
        )
    )
    ckpt = moved / "checkpoints/ckpt-000000000040"
    loaded = {k: v for f in sorted(dump.iterdir()) for k, v in load_file(str(f)).items()}
    saved = read_state(ckpt)  # the one format, whichever backend wrote it: loaded exactly
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    # ... and the target layout writes that state as the same bytes the source layout wrote
    shards = json.loads((ckpt / schema.MANIFEST).read_text())["shards"]
    assert len(shards) > 1 and sorted(p.name for p in dump.iterdir()) == shards
    assert all((dump / name).read_bytes() == (ckpt / name).read_bytes() for name in shards)
    _assert_close(checkpoint_state_dict(latest(straight)), checkpoint_state_dict(latest(moved)))


# ------------------------------------------------------------------------------ no human needed


def _assert_same_state(a, b):
    """Weights, buffers and Adam state bitwise equal."""
    sa, sb = read_state(a), read_state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _torchrun(run_dir, *extra, max_restarts=0, **env_extra):
    import subprocess

    from conftest import PYTHON, ROOT
    from launch import env

    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["--max-restarts", str(max_restarts), "lfbm_dist/train.py", *TINY, f"train.run_dir={run_dir}"]
    cmd += ["train.total_kimg=0.128", "train.snapshot_every_kimg=0.032", "train.log_every_kimg=0.032", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env(**env_extra))


def test_a_rank_that_fails_once_is_restarted_by_the_agent_and_the_run_ends_bitwise_equal(tmp_path):
    """torchrun --max-restarts 1: rank 1 raises after step 5 of 8 (snapshots every 2 steps); the agent
    restarts both workers, which continue from step 4's checkpoint with no flag and no human, and the
    final weights and Adam state are bitwise those of a run that never failed. The disk is slow
    (each rank's part of a snapshot takes 1.5 s), so step 4's snapshot is still being written when
    rank 1 fails: the failing rank finishes its part and rank 0 commits it on their way out."""
    # The uninterrupted reference: the same 2 DDP ranks, started warm (the agent is not its subject).
    extra = ["train.total_kimg=0.128", "train.snapshot_every_kimg=0.032", "train.log_every_kimg=0.032"]
    straight = _ok(run("ddp2", *TINY, f"train.run_dir={tmp_path / 'straight'}", *extra, warm_ranks=True))
    assert "2 rank(s)" in straight.stdout
    slow = {"LFBM_FAULT_SLOW_WRITE_S": "1.5"}
    failed = _ok(_torchrun(tmp_path / "failed", max_restarts=1, LFBM_FAULT_RAISE_ONCE="5:1", **slow))
    assert "injected failure of rank 1 after step 5" in failed.stderr
    assert "resumed from ckpt-000000000064 at kimg 0.064" in failed.stdout  # the agent's restart, no flag
    a, b = latest(tmp_path / "straight"), latest(tmp_path / "failed")
    assert a.name == b.name == "ckpt-000000000128"
    _assert_same_state(a, b)
    # The same through `accelerate launch --max_restarts 1` (it runs torch elastic's agent too).
    from conftest import ROOT
    from launch import command, env

    acc = command("ddp2", *TINY, f"train.run_dir={tmp_path / 'acc'}", "train.total_kimg=0.128")
    acc[acc.index("launch") + 1 : acc.index("launch") + 1] = ["--max_restarts", "1"]
    acc += ["train.snapshot_every_kimg=0.032", "train.log_every_kimg=0.032"]
    import subprocess

    proc = _ok(subprocess.run(acc, cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env=env(LFBM_FAULT_RAISE_ONCE="5:1", **slow)))  # fmt: skip
    assert "resumed from ckpt-000000000064 at kimg 0.064" in proc.stdout
    _assert_same_state(a, latest(tmp_path / "acc"))
