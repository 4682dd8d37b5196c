"""README.md cannot rot: every bash block carries a `<!-- readme-test: … -->` directive, and every block
marked `run` is run in order, from a fresh shell with the environment activated as README says, in a
copy of the repository. Commands are shortened only by appending overrides that make them small
(fewer kimg, samples and steps); nothing else is changed. Blocks that need GPUs or data we cannot have
say so in their directive and are skipped."""

import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT

DIRECTIVE = re.compile(r"<!-- readme-test: (\w+)[^>]*-->\s*```bash\n(.*?)```", re.S)
SHORTER = {  # appended to a command line that starts with the key (after continuation lines are joined)
    "bash scripts/quickstart.sh": "train.total_kimg=0.1 eval.recon_samples=16 eval.fid_num_samples=50 "
    "langevin.test_num_steps=5",
    "accelerate launch": "train.total_kimg=0.032",
    "DS_ACCELERATOR=cpu accelerate launch": "train.total_kimg=0.032",
    "lfbm-train": "train.total_kimg=0.1 train.log_every_kimg=0.1",
    "lfbm-evaluate": "eval.fid_num_samples=8 eval.fid_ref_samples=8 eval.recon_samples=8 langevin.test_num_steps=5",
    "lfbm-compare": "--recon-images 16 --overrides langevin.test_num_steps=5",
}


def _blocks():
    text = (ROOT / "README.md").read_text()
    return text, DIRECTIVE.findall(text)


def test_every_bash_block_says_how_it_is_tested():
    text, blocks = _blocks()
    assert text.count("```bash\n") == len(blocks) > 5
    assert {mode for mode, _ in blocks} <= {"run", "skip"}


def _shorten(block: str) -> str:
    lines = block.replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        line = line.split("  #")[0].rstrip() if "  #" in line else line
        command = line.strip().removeprefix("bash scripts/setup.sh && ")  # CI has just run the setup
        if command.startswith("tensorboard"):  # a server in the background: check it reads the logs instead
            logdir = command.split("--logdir")[1].split()[0]
            command = f"tensorboard --inspect --logdir {logdir} | grep -q scalars"
        for prefix, extra in SHORTER.items():
            if command.startswith(prefix):
                command = f"{command} {extra}"
        out.append(command)
    return "\n".join(out)


def _repo_copy(dest):
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    for shared in (".venv", ".cache"):
        os.symlink(ROOT / shared, dest / shared)


def _photos(folder):
    from PIL import Image
    from skimage.data import lfw_subset

    folder.mkdir()
    for i, face in enumerate(lfw_subset()[:60]):
        Image.fromarray((face * 255).astype("uint8")).convert("RGB").save(folder / f"face_{i:03d}.png")


@pytest.mark.slow
def test_readme_commands_run_as_pasted(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _repo_copy(repo)
    _photos(repo / "my_photos")
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": os.path.expanduser("~/.cache/lfbm_dist/torch_extensions"),
    }
    _, blocks = _blocks()
    for mode, block in blocks:
        if mode != "run":
            continue
        script = "set -euo pipefail\nsource .venv/bin/activate\n" + _shorten(block)
        proc = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (block, proc.stdout[-2000:], proc.stderr[-3000:])
    for made in (
        "runs/quickstart/compare.png",
        "runs/my_photos/samples/grid.png",
        "runs/quickstart/completed/grid.png",
        "runs/quickstart/flow/export/model.safetensors",
        "runs/zero2_cpu/trainer_state.json",
    ):
        assert (repo / made).is_file(), made
