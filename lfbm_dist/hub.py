"""Exported models as Hugging Face Hub folders, loadable in one call from a folder or a repository id.

An export folder (lfbm-export --out DIR) holds, in the Hub's layout:
    config.json         model_type "lfbm", the library, the export format and the full run config
    model.safetensors   float32 weights of generator + prior (no pickles)
    config.yaml         the same config, as lfbm_dist's loaders read it
    README.md           a model card: architecture, training data, budget, the run's metrics, samples
    samples.png         16 prior samples (seed 0)
Upload it with `huggingface-cli upload OWNER/NAME DIR`. `lfbm_dist.export.load_pretrained(ID_OR_FOLDER)`
fetches a repository through huggingface_hub (`resolve` here: its cache; HF_HUB_OFFLINE=1 reads only
the cache) and loads it; `lfbm-sample --model OWNER/NAME` samples from it. No code is executed from a downloaded folder:
safetensors and YAML/JSON only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import Config
from .files import write_atomic
from .training.checkpoint import CheckpointError

FORMAT = "lfbm_dist-export/1"
NEEDED = ("model.safetensors", "config.yaml")
PATTERNS = ["config.json", "config.yaml", "model.safetensors", "README.md", "samples.png"]


def write_hub_files(
    out_dir: Path, model, cfg: Config, source: Path, images_seen: int | None, weights: str = "ema",
    described: str | None = None,
) -> None:  # fmt: skip
    """config.json, samples.png and README.md beside an export's model.safetensors + config.yaml;
    weights: which weights the export carries (the EMA's or the raw ones), said in both."""
    from .image_grid import save_png
    from .metrics.sampling import sample_images

    meta = {"model_type": "lfbm", "library_name": "lfbm_dist", "export_format": FORMAT, "config": cfg.to_dict(),
            "weights": weights}  # fmt: skip
    write_atomic(out_dir / "config.json", json.dumps(meta, indent=1, sort_keys=True))
    with torch.no_grad():
        samples = sample_images(model.eval(), list(range(16)), 0, torch.device("cpu"))
    save_png(samples, out_dir / "samples.png")
    card = model_card(cfg, described or str(source), images_seen, _metrics(source), weights)
    write_atomic(out_dir / "README.md", card)


def _metrics(source: Path) -> dict:
    """The run's last evaluation (RUN_DIR/metrics.json), if the checkpoint sits in a run directory."""
    path = source.parent.parent / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def model_card(cfg: Config, source: str, images_seen: int | None, metrics: dict, weights: str = "ema") -> str:
    g, p, d = cfg.generator, cfg.prior, cfg.data
    data = f"shards {', '.join(d.shards)}" if d.source == "shards" else f"packaged '{d.dataset}'"
    data += f", {d.resolution}², {g.image_channels} channel(s)"
    seen = f"{images_seen / 1000:g} kimg" if images_seen is not None else "unknown"
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())) or "| (none recorded) | |"
    return f"""---
library_name: lfbm_dist
tags: [latent-space-prior, normalizing-flow, generator, langevin]
---
# LFBM: {g.arch} generator with a {p.kind} prior

A latent-space flow-based prior model (generator x = g(z) + ε, prior z = f(z₀)), learned by maximum
likelihood with short-run Langevin posterior inference, trained with lfbm_dist.

* Architecture: generator `{g.arch}` (nz {g.nz}, {g.image_channels} channel(s), {d.resolution}²), prior `{p.kind}`
* Training data: {data}{f", occlusion {d.occlusion}" if d.occlusion != "none" else ""}
* Budget: {seen} seen of {cfg.train.total_kimg:g} kimg, seed {cfg.train.seed}, global batch {cfg.train.global_batch}
* Langevin: K = {cfg.langevin.num_steps} steps, step size {cfg.langevin.step_size}, σ = {cfg.langevin.sigma}
* Weights: {_WEIGHTS[weights](cfg)}
* Exported from checkpoint `{source}`

## Metrics of the run

| metric | value |
|---|---|
{rows}

## Samples (prior, seed 0)

![samples](samples.png)

## Use

```python
from lfbm_dist.export import load_pretrained
model, cfg = load_pretrained("OWNER/NAME")   # or a local folder
```
or `lfbm-sample --model OWNER/NAME --num 64 --out samples/`.
"""


_WEIGHTS = {
    "ema": lambda cfg: (
        f"the exponential moving average of the training weights (half-life {cfg.ema.halflife_kimg:g} kimg, "
        f"ramp-up {cfg.ema.rampup:g} of the images seen)"
    ),
    "raw": lambda cfg: "the raw weights of the last training step (no averaging)",
}


def resolve(id_or_path: str) -> Path:
    """The local folder of a model: the path itself, or the Hub repository's files in the cache
    (downloaded unless HF_HUB_OFFLINE=1). One CheckpointError line if it cannot be had."""
    path = Path(id_or_path).expanduser()
    if path.exists():
        folder = path if path.is_dir() else path.parent
    else:
        folder = _from_hub(id_or_path)
    missing = [name for name in NEEDED if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{id_or_path}: not an lfbm_dist model folder ({missing[0]} is missing; export one with "
            "lfbm-export --run RUN_DIR --out DIR)"
        )
    return folder


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=PATTERNS))
    except HFValidationError:
        raise CheckpointError(f"{repo_id}: neither a folder nor a Hub repository id (OWNER/NAME)") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: not in the local Hub cache and the Hub cannot be reached (HF_HUB_OFFLINE or no "
            "network); download it where there is network, or give a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such Hub repository (or no access to it)") from None
