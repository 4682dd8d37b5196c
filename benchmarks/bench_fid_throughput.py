"""FID sampling + Inception feature throughput at a config's resolution. Prints JSON.

    python benchmarks/bench_fid_throughput.py --config celebahq256 --samples 10000 --batch 250

Samples the flow prior and generator (ancestral, no chain) and extracts Inception-v3 pool features,
as `lfbm-evaluate --metrics fid` does, for N samples after one warm-up batch; the 50,000-sample time
is extrapolated linearly (labelled so). Where the FID network file is not on the machine (the 87 MB
file cannot travel to a lent GPU machine), torchvision's Inception-v3 with random weights — the same
architecture — is timed instead and the output names which network ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfbm_dist.config import load_config  # noqa: E402
from lfbm_dist.metrics.fid import generated_stats  # noqa: E402
from lfbm_dist.metrics.inception import InceptionError, load_inception  # noqa: E402
from lfbm_dist.metrics.sampling import sample_images  # noqa: E402
from lfbm_dist.training.build import build_model  # noqa: E402


class SameArchitectureInception:
    """Throughput stand-in where the FID network file is absent: torchvision's Inception-v3 (the
    same architecture, random weights) with the FID network's uint8 → 299² → 2048-feature interface.
    Good for timing only, never for an FID value (the output names which network ran)."""

    def __init__(self):
        import torchvision

        self.net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
        self.net.fc = torch.nn.Identity()

    def to(self, device):
        self.net.to(device)
        return self

    def __call__(self, images_uint8):
        import torch.nn.functional as F

        with torch.no_grad():
            x = F.interpolate(images_uint8.float() / 127.5 - 1, size=(299, 299), mode="bilinear", align_corners=False)
            return self.net(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--jsonl", type=Path, help="also append the result here as one line")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    path = Path(args.config) if Path(args.config).is_file() else ROOT / "configs" / f"{args.config}.yaml"
    cfg = load_config(path, args.overrides)
    device = torch.device(args.device)
    model = build_model(cfg).to(device).eval()
    try:
        inception, network = load_inception(cfg.eval.inception).to(device), "FID Inception-v3 (TorchScript)"
    except InceptionError as exc:
        inception, network = SameArchitectureInception().to(device), f"torchvision Inception-v3, random weights ({exc})"

    def sample(idx):
        return sample_images(model, idx, 0, device)

    generated_stats(sample, inception, args.batch, args.batch, device)  # warm-up (cuDNN, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # timing boundary
    started = time.monotonic()
    with torch.inference_mode():
        generated_stats(sample, inception, args.samples, args.batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # timing boundary
    seconds = time.monotonic() - started
    result = {
        "benchmark": "fid_throughput",
        "resolution": cfg.data.resolution,
        "samples": args.samples,
        "batch": args.batch,
        "seconds": seconds,  # full precision: derived figures agree with raw ones on any machine
        "images_per_sec": args.samples / seconds,
        "extrapolated_50k_seconds": seconds * 50_000 / args.samples,
        "network": network,
        "note": "50k time extrapolated linearly from the measured run, not measured",
    }
    if args.jsonl is not None:
        with args.jsonl.open("a") as f:
            f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
