"""Slurm through submitit's public API: training, sweeps (job arrays) and chained evaluation.
Entry point: `lfbm-slurm` (cli.py); jobs.py holds what runs inside the allocation."""
