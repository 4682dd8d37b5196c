"""Trained models as Hugging Face Hub folders: lfbm-export writes the Hub layout and a model card, one
call loads it from a folder or a repository id (offline, from a real local Hub cache), and it samples
exactly what the checkpoint it came from samples."""

import json
import shutil

import pytest
import torch
from launch import finished_run, module

from lfbm_dist.export import load_for_inference, load_pretrained
from lfbm_dist.metrics.sampling import sample_images
from lfbm_dist.training.checkpoint import CheckpointError

TINY = ["--config", "configs/test_tiny.yaml"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    run_dir = finished_run(root / "run", *TINY)
    out = root / "export"
    proc = module("lfbm_dist.export", "--run", str(run_dir), "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir, out


def test_export_writes_the_hub_layout_and_a_model_card(exported):
    _, out = exported
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "config.yaml", "README.md",
                                                "samples.png"}  # fmt: skip
    meta = json.loads((out / "config.json").read_text())
    assert meta["model_type"] == "lfbm" and meta["config"]["generator"]["arch"] == "tiny16"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: lfbm_dist") and "![samples](samples.png)" in card
    assert "Training data: packaged 'synthetic'" in card and "kimg seen of 0.064 kimg" in card


def test_an_export_describes_the_model_without_the_trainers_local_paths(exported, tmp_path):
    """config.json, config.yaml and the model card name the data and the run, not where they lay; local
    paths only with --local-paths."""
    run_dir, out = exported
    for name in ("config.json", "config.yaml", "README.md"):
        text = (out / name).read_text()
        assert str(run_dir) not in text and str(run_dir.parent) not in text, name
    assert f"Exported from checkpoint `{run_dir.name}/ckpt-" in (out / "README.md").read_text()
    local = tmp_path / "local"
    proc = module("lfbm_dist.export", "--run", str(run_dir), "--out", str(local), "--local-paths", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(run_dir) in (local / "config.yaml").read_text() and str(run_dir) in (local / "README.md").read_text()


def test_a_model_folder_is_checked_as_a_config_is(exported, tmp_path):
    """config.json (the Hub's file, which users edit) must say what config.yaml says; a size that would
    not fit in this machine's memory is refused before anything is allocated — each in one line."""
    _, out = exported
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    meta = json.loads((edited / "config.json").read_text())
    meta["config"]["langevin"]["num_steps"] = 99
    (edited / "config.json").write_text(json.dumps(meta))
    proc = module("lfbm_dist.sample", "--export", str(edited), "--num", "4", "--out", str(tmp_path / "s1"))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "config.json and config.yaml disagree at langevin.num_steps (99 in config.json" in lines[0], lines[0]
    huge = tmp_path / "huge"
    shutil.copytree(out, huge)
    for name in ("config.yaml", "config.json"):  # both, as a user scaling the model up would write them
        text = (huge / name).read_text()
        (huge / name).write_text(text.replace("ngf: 8", "ngf: 1000000").replace('"ngf": 8', '"ngf": 1000000'))
    proc = module("lfbm_dist.sample", "--export", str(huge), "--num", "4", "--out", str(tmp_path / "s2"))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "GiB" in lines[0] and "generator.ngf=1000000" in lines[0] and "this machine has free" in lines[0], lines[0]


def test_one_call_loads_the_folder_and_samples_what_the_checkpoint_samples(exported):
    run_dir, out = exported
    from_checkpoint, _, _ = load_for_inference(str(run_dir))
    from_folder, cfg = load_pretrained(str(out))
    with torch.no_grad():
        a = sample_images(from_checkpoint, list(range(8)), 3, torch.device("cpu"))
        b = sample_images(from_folder, list(range(8)), 3, torch.device("cpu"))
    assert torch.equal(a, b) and cfg.generator.arch == "tiny16"


def test_a_hub_repository_id_loads_offline_from_the_local_cache_and_bad_sources_are_one_line(exported, tmp_path):
    _, out = exported
    # The Hub cache's own layout: models--OWNER--NAME/snapshots/<commit>/… and refs/main naming the commit.
    repo = tmp_path / "hf" / "hub" / "models--lfbm--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(out, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub_env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    args = ["--num", "4", "--batch", "4"]
    by_id = module(
        "lfbm_dist.sample", "--model", "lfbm/tiny", *args, "--out", str(tmp_path / "a"), cold=True, **hub_env
    )
    assert by_id.returncode == 0, by_id.stderr[-2000:]
    by_folder = module("lfbm_dist.sample", "--export", str(out), *args, "--out", str(tmp_path / "b"))
    assert by_folder.returncode == 0, by_folder.stderr[-2000:]
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.safetensors").unlink()
    for source, expected, hub in (
        (str(broken), "model.safetensors is missing", {}),  # a folder: no Hub setting read, a warm start will do
        ("lfbm/absent", "not in the local Hub cache", {"cold": True, **hub_env}),
    ):
        proc = module("lfbm_dist.sample", "--model", source, *args, "--out", str(tmp_path / "c"), **hub)
        errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_pretrained(str(broken))
