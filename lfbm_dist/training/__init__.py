"""Training: the distributed engine (the one boundary to Accelerate, DeepSpeed and torch.distributed),
the trainer's phases, checkpoints, run directories, graceful stop, the fast path and the evaluation
suite. Entry point: lfbm_dist/train.py (lfbm-train)."""
