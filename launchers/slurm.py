"""`python launchers/slurm.py …` is `lfbm-slurm …` (lfbm_dist/slurm/cli.py), kept for existing scripts."""

import sys

from lfbm_dist.slurm.cli import main

if __name__ == "__main__":
    sys.exit(main())
