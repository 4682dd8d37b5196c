"""Reproduction harness: declarative grids (experiments/*.yaml), a resumable local runner, Slurm
submission and summaries with the paper's values beside ours. Entry point: `lfbm-repro` (cli.py)."""

from .spec import Grid, GridError, Point, load_grid

__all__ = ["Grid", "GridError", "Point", "load_grid"]
