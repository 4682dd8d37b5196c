"""The one checkpoint format: how the state is split into files (a function of the tensors only),
and the conversion of checkpoints written in the earlier framework-file format, which are refused in
one line naming the conversion command until converted."""

import json
import shutil

import pytest
import torch
from launch import finished_run, module, run
from safetensors.torch import save_file

from lfbm_dist import state_schema as schema
from lfbm_dist.config import load_config
from lfbm_dist.files import file_digest
from lfbm_dist.training.build import build_model, build_optimizer
from lfbm_dist.training.checkpoint import (
    CheckpointError,
    latest,
    list_complete,
    model_state_dict,
    plan_shards,
    read_state,
    shard_owner,
    verify,
)

TINY = ["--config", "configs/test_tiny.yaml", "train.total_kimg=0.032", "langevin.num_steps=2"]


def test_the_split_into_files_depends_on_the_tensors_only():
    state = {f"param/p{i}": torch.zeros(256) for i in range(6)}  # 1 KiB each
    state |= {"buffer/bn.running_mean": torch.zeros(4), "step/p0": torch.tensor(1.0)}
    shards = plan_shards(state, 2048)
    assert shards[0][:2] == ["buffer/bn.running_mean", "step/p0"]  # buffers first, so rank 0 writes them
    assert sorted(k for s in shards for k in s) == sorted(state) and len(shards) == 4
    assert plan_shards(dict(reversed(list(state.items()))), 2048) == shards  # not the insertion order
    assert [shard_owner(i, s, 3) for i, s in enumerate(shards)] == [0, 1, 2, 0]
    assert shard_owner(1, ["buffer/x"], 3) == 0  # BatchNorm statistics are rank 0's, as on one process


def _old_format(ckpt, old, deepspeed: bool):
    """`ckpt` rewritten as lfbm_dist wrote checkpoints before the single format (Accelerate's DDP
    files, or DeepSpeed's full_state.safetensors), with its flat manifest."""
    state = {k: v for k, v in read_state(ckpt).items() if not schema.is_ema(schema.kind_of(k))}  # (came later)
    old.mkdir()
    for part in (schema.TRAINER_STATE, schema.CONFIG, schema.data_state_file(0)):
        shutil.copyfile(ckpt / part, old / part)
    if deepspeed:
        save_file({k: v for k, v in state.items() if not k.startswith("buffer/")}, str(old / "full_state.safetensors"))
        (old / "layout.json").write_text(json.dumps({"backend": "deepspeed", "zero_stage": 2, "world_size": 2}))
    else:
        cfg = load_config(ckpt / schema.CONFIG)
        model = build_model(cfg)
        adam = build_optimizer(cfg, model)
        model.load_state_dict(model_state_dict(state))
        names = {id(p): n for n, p in model.named_parameters()}
        for group in adam.param_groups:
            for p in group["params"]:
                n = names[id(p)]
                adam.state[p] = {"step": state[f"step/{n}"], "exp_avg": state[f"exp_avg/{n}"]}
                adam.state[p]["exp_avg_sq"] = state[f"exp_avg_sq/{n}"]
        save_file(model.state_dict(), str(old / "model.safetensors"))
        torch.save(adam.state_dict(), old / "optimizer.bin")
    files = [p for p in old.iterdir() if p.is_file()]
    manifest = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files}
    (old / schema.MANIFEST).write_text(json.dumps(manifest))
    (old / schema.COMPLETE).write_text("ok\n")
    return state


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run in the current format (read only): the tests rewrite its checkpoint in the earlier one."""
    return finished_run(tmp_path_factory.mktemp("current") / "r", *TINY)


@pytest.mark.parametrize("deepspeed", [False, True], ids=["ddp-files", "zero-without-its-folder"])
def test_an_earlier_format_is_refused_in_one_line_then_converted_exactly(tmp_path, trained, deepspeed):
    old = tmp_path / "old/checkpoints/ckpt-000000000032"
    old.parent.mkdir(parents=True)
    state = _old_format(latest(trained), old, deepspeed)
    with pytest.raises(CheckpointError, match="convert it once with `lfbm-export --upgrade-checkpoint "):
        verify(old)
    resume = run("single", *TINY, f"train.run_dir={tmp_path / 'old'}", "train.resume=auto", "train.total_kimg=0.064")
    assert resume.returncode == 2 and "lfbm-export --upgrade-checkpoint" in resume.stderr.strip().splitlines()[-1]
    upgrade = ["--upgrade-checkpoint", str(old)]
    proc = module("lfbm_dist.export", *upgrade, timeout=300)
    if deepspeed:  # the flow's permutation buffers lived in DeepSpeed's own folder, which is not here
        assert proc.returncode == 2 and "pytorch_model/ folder beside it is missing" in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    converted = read_state(old)
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)
    assert (old.parent / "ckpt-000000000032.pre-v2").is_dir() and list_complete(tmp_path / "old") == [old]
    again = module("lfbm_dist.export", *upgrade, timeout=300)
    assert again.returncode == 2 and "already in the current format" in again.stderr
    resume = run("single", *TINY, f"train.run_dir={tmp_path / 'old'}", "train.resume=auto", "train.total_kimg=0.064")
    assert resume.returncode == 0 and "resumed from ckpt-000000000032" in resume.stdout, resume.stderr[-2000:]
    # weight averaging came after this format: the converted run's averages start from its raw weights
    assert "holds no ema, ema_std0.05, ema_std0.1: they start from its raw weights" in resume.stdout


class _CodeOnLoad:
    """What a pickle can carry and the weights-only loader refuses: an object rebuilt by running code."""

    def __reduce__(self):
        return (print, ("this ran on load",))


def test_an_optimizer_pickle_that_would_run_code_is_refused_in_one_line(tmp_path, trained):
    old = tmp_path / "old/checkpoints/ckpt-000000000032"
    old.parent.mkdir(parents=True)
    _old_format(latest(trained), old, deepspeed=False)
    torch.save({"state": {}, "param_groups": [], "extra": _CodeOnLoad()}, old / "optimizer.bin")
    manifest = json.loads((old / schema.MANIFEST).read_text())
    manifest["optimizer.bin"] = {
        "bytes": (old / "optimizer.bin").stat().st_size,
        "sha256": file_digest(old / "optimizer.bin"),
    }
    (old / schema.MANIFEST).write_text(json.dumps(manifest))
    proc = module("lfbm_dist.export", "--upgrade-checkpoint", str(old), timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "optimizer.bin cannot be read as plain tensors" in lines[0] and "never does" in lines[0], lines[0]
    assert "this ran on load" not in proc.stdout + proc.stderr
