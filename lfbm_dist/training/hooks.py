"""Where a run can be observed or disturbed from outside, as one explicit object.

The trainer and the snapshot writer call these at named points; a normal run passes `NO_HOOKS`, whose
every method does nothing. The test suite's fault injection (training/faults.py) is a subclass that
the environment switches on — so no test patches a method of the product, and reading the trainer
shows every point where a test can act.
"""

from __future__ import annotations

from typing import Any

import torch


class Hooks:
    # ------------------------------------------------------------------ trainer
    def after_infer(self, step: int, rank: int, micro_batches: list[Any]) -> None:
        """The step's inferred latents, before the guard looks at them."""

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The learning loss about to be back-propagated."""
        return loss

    def after_step(self, step: int, rank: int) -> None:
        """A step has been learned (step = steps done)."""

    def before_images(self) -> None:
        """The image grids are about to be logged (after the final checkpoint at the end of a run)."""

    def after_resume(self, engine, plain: torch.nn.Module, cfg, averages=None) -> None:
        """A checkpoint has been loaded into the model, the optimizer and the weight averages (collective
        context: every rank)."""

    def before_compile(self, ordinal: int) -> None:
        """A Langevin step graph (the ordinal-th of the process) is about to be compiled, inside the fallback."""

    def before_record(self, chains: int) -> None:
        """A Langevin chain graph of `chains` chains is about to be compiled or captured (where memory
        runs out first): an out-of-memory here halves the chain batch."""

    # ------------------------------------------------------------------ snapshot writer
    def before_write(self) -> None:
        """This rank's writer is about to write its part of a snapshot."""

    def in_commit(self, images_seen: int) -> None:
        """Rank 0: every part is on disk; the manifest, COMPLETE and the rename follow."""

    def in_prune(self) -> None:
        """An old checkpoint has been renamed aside and is about to be deleted."""


NO_HOOKS = Hooks()
