"""Train LFBM (latent normalizing-flow prior + ConvNet generator, Algorithm 1).

    lfbm-train --config configs/quickstart.yaml [key=value ...]              # one process
    lfbm-train --config configs/celebahq256.yaml --dry-run                   # resolved config + checks
    accelerate launch --config_file configs/accelerate/ddp.yaml lfbm_dist/train.py --config ...   # GPUs
    accelerate launch --multi_gpu --num_processes 2 lfbm_dist/train.py --config ...               # 2 CPU ranks
    torchrun --nproc_per_node 8 -m lfbm_dist.train --config configs/celebahq256.yaml

The resolved config is written to RUN_DIR/config.yaml, TensorBoard logs to RUN_DIR/tensorboard,
checkpoints to RUN_DIR/checkpoints, each rank's log (tracebacks included) to RUN_DIR/logs/.
Ctrl-C or SIGTERM: the current step finishes, a checkpoint is written, and the command to resume
is printed; a second signal exits at once.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # `accelerate launch lfbm_dist/train.py` runs this file as a script, which puts lfbm_dist/ itself
    # first on sys.path; its modules (config, data, …) must not shadow top-level packages.
    sys.path.pop(0)

from lfbm_dist import cli, logs  # noqa: E402


def _dry_run(cfg) -> None:
    """The resolved config, then what starting it would find: run directory and data (one-line
    errors, after the config, if either would stop the run)."""
    from lfbm_dist.config import dump_config
    from lfbm_dist.training import rundir
    from lfbm_dist.training.build import memory_training_set, resolve_shards

    print(dump_config(cfg), end="", flush=True)
    state = rundir.inspect(cfg)
    if cfg.data.source == "shards":
        shards = resolve_shards(cfg)
        images = sum(int(s.samples or 0) for s in shards)
        data = f"{images} images in {len(shards)} shard(s)" + (
            "" if all(s.checksums for s in shards) else " (no per-sample checksums: cannot be verified)"
        )
    else:
        images = len(memory_training_set(cfg)[1])
        data = f"{images} images of packaged '{cfg.data.dataset}'"
    if images == 0:
        from lfbm_dist.data.errors import DataError

        raise DataError("the training data is empty")
    print(f"# data: {data}\n# run dir {cfg.train.run_dir}: {state.describe()}")


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("lfbm-train", __doc__)
    p.add_argument("--config", required=True, help="YAML preset, e.g. configs/quickstart.yaml")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config, check the data and the run directory, and exit",
    )
    cli.add_overrides(p)
    args = p.parse_intermixed_args(argv)  # key=value overrides may come before or after options
    logs.setup()

    def body() -> int:
        from lfbm_dist.config import load_config

        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            _dry_run(cfg)
            return 0
        from lfbm_dist.lifetime import die_with_parent, launched_rank
        from lfbm_dist.training.session import train

        if launched_rank():  # a rank whose launcher is killed exits too (no orphan training on)
            die_with_parent()
        train(cfg, sys.argv if argv is None else ["lfbm-train", *argv])
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
