"""Config validation: every bad-config class fails before any work, with one line naming key and file."""

import pytest
from conftest import ROOT
from launch import module

from lfbm_dist.config import ConfigError, load_config

PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_dry_run_every_preset(preset, tmp_path):
    """Every preset resolves; the dry run then checks its data and run directory: presets whose
    shards are not built here stop with one line naming the missing shard."""
    proc = module("lfbm_dist.train", "--config", f"configs/{preset}", "--dry-run", f"train.run_dir={tmp_path}/run")
    assert "generator:" in proc.stdout and "langevin:" in proc.stdout
    if proc.returncode == 0:
        assert f"# run dir {tmp_path}/run: new run" in proc.stdout and "# data: " in proc.stdout
    else:
        assert proc.returncode == 2 and proc.stderr.startswith("error: shard not found: data/"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


BAD = [
    ("train:\n  bogus_key: 1\n", "unknown key 'train.bogus_key'"),
    ("langevin:\n  num_steps: twenty\n", "langevin.num_steps must be an integer"),
    ("langevin:\n  num_steps: -3\n", "langevin.num_steps must be >= 0"),
    ("langevin:\n  sigma: 0\n", "langevin.sigma must be > 0"),
    ("langevin:\n  step_size: -0.1\n", "langevin.step_size must be > 0"),
    ("train:\n  batch_per_gpu: 8\n  global_batch: 12\n", "train.global_batch must be a multiple"),
    ("prior:\n  kind: vae\n", "prior.kind must be one of"),
    ("generator:\n  arch: celeba64\ndata:\n  resolution: 32\n", "data.resolution must equal"),
    ("generator:\n  nz: 7\n", "generator.nz must be an even integer"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("train: [1, 2\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split()[0] for _, m in BAD])
def test_bad_config_gives_one_line_naming_key_and_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = module("lfbm_dist.train", "--config", str(path), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and str(path) in lines[0], lines[0]
    assert not (ROOT / "runs" / "default").exists()  # failed before any work: no run directory


def test_override_errors_name_the_command_line():
    with pytest.raises(ConfigError, match="command line: unknown key 'langevin.steps'"):
        load_config(ROOT / "configs/test_tiny.yaml", ["langevin.steps=3"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(ROOT / "configs/test_tiny.yaml", ["langevin.num_steps"])


def test_overrides_and_prior_shorthand():
    cfg = load_config(ROOT / "configs/test_tiny.yaml", ["langevin.num_steps=7", "prior=ebm", "optim.lr_prior=1e-4"])
    assert cfg.langevin.num_steps == 7 and cfg.prior.kind == "ebm" and cfg.optim.lr_prior == 1e-4


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("configs/nope.yaml")


def test_resolved_config_written_to_run_dir(tmp_path):
    run_dir = tmp_path / "r"
    proc = module(
        "lfbm_dist.train", "--config", "configs/test_tiny.yaml", f"train.run_dir={run_dir}", "langevin.num_steps=3"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    resolved = load_config(run_dir / "config.yaml")
    assert resolved.langevin.num_steps == 3 and resolved.train.run_dir == str(run_dir)
