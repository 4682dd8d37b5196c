"""Train LFBM (latent normalizing-flow prior + ConvNet generator, Algorithm 1).

    python -m lfbm_dist.train --config configs/quickstart.yaml [key=value ...]
    accelerate launch lfbm_dist/train.py --config configs/celebahq256.yaml
    accelerate launch --multi_gpu --num_processes 2 lfbm_dist/train.py --config ...   # 2 CPU ranks (gloo)
    torchrun --nproc_per_node 8 -m lfbm_dist.train --config configs/celebahq256.yaml

`--dry-run` prints the resolved config and exits. The resolved config is written to
RUN_DIR/config.yaml; TensorBoard logs go to RUN_DIR/tensorboard.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `accelerate launch lfbm_dist/train.py` runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "lfbm_dist"

from lfbm_dist.config import ConfigError, dump_config, load_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/quickstart.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. langevin.num_steps=40")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dump_config(cfg), end="")
        return 0
    from lfbm_dist.checkpoint import CheckpointError
    from lfbm_dist.data.shards import DataError
    from lfbm_dist.engine import LaunchError
    from lfbm_dist.loop import NonFiniteError, training_loop

    try:
        training_loop(cfg)
    except (CheckpointError, ConfigError, LaunchError, DataError, NonFiniteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
