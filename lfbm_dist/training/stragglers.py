"""Slow ranks named: each rank's time per step, split into data wait, Langevin chain and learning,
gathered at every logging tick (one small collective beside the tick's own reduction, off the
training's critical path). A rank slower than the median of the others by more than
train.straggler_share, and by at least MIN_EXCESS_S per step, in a phase is named in one warning
line (at most one per interval); the skews go to the trackers as perf/<phase>_max_over_median (each
rank against the median of the others, the largest), and the largest seen is the end line's.

Waiting is not counted: the chain phase ends at the guard's host sync, before its all-reduce, so a fast
rank's wait for a slow one shows in neither rank's numbers. On CUDA the learning phase is host time
(its kernels finish in the next step's chain phase, which the guard's sync ends)."""

from __future__ import annotations

import logging
import statistics

import torch

log = logging.getLogger("lfbm_dist")
PHASES = ("data", "langevin", "learn")
# …and by at least this much per step: milliseconds of scheduling noise between ranks sharing cores
# (a CI machine) make large ratios of tiny times, not stragglers
MIN_EXCESS_S = 0.05


class Stragglers:
    def __init__(self, rank: int, world_size: int, share: float):
        self.rank, self.world, self.share = rank, world_size, share
        self.sums = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.worst: tuple[float, int, str] | None = None  # (×, rank, phase) over the whole run

    def add(self, phase: str, seconds: float, step_done: bool = False) -> None:
        self.sums[phase] += seconds
        self.steps += step_done

    def tick(self, gather, kimg: float) -> dict[str, float]:
        """Collective (every rank, at a logging tick): the skew scalars; rank 0 warns of a straggler.
        gather: the engine's all_gather_cat."""
        mine = torch.tensor([[self.sums[p] / max(1, self.steps) for p in PHASES]], dtype=torch.float64)
        table = gather(mine, dim=0)  # (world, phases): seconds per step
        self.sums, self.steps = dict.fromkeys(PHASES, 0.0), 0
        if self.world < 2 or float(table.sum()) == 0.0:
            return {}
        names = ("step_time", *PHASES)
        full = torch.cat([table.sum(1, keepdim=True), table], dim=1)
        scalars, slowest = {}, (0.0, -1, "")
        for j, name in enumerate(names):
            ratios = [_ratio(full[:, j].tolist(), r) for r in range(self.world)]
            top = max(range(self.world), key=lambda r: ratios[r])
            scalars[f"perf/{name}_max_over_median"] = ratios[top]
            if name != "step_time" and ratios[top] > slowest[0]:
                slowest = (ratios[top], top, name)
        ratio, rank, phase = slowest
        if self.worst is None or ratio > self.worst[0]:
            self.worst = slowest
        column = table[:, PHASES.index(phase)].tolist() if rank >= 0 else []
        others = statistics.median(v for r, v in enumerate(column) if r != rank) if column else 0.0
        if ratio > 1 + self.share and column[rank] - others >= MIN_EXCESS_S and self.rank == 0:
            log.warning(
                "straggler: rank %d is %.1f× slower than the others' median in its %s phase (%.3f s vs %.3f s "
                "per step, logging interval ending at kimg %g; perf/%s_max_over_median)",
                rank, ratio, phase, float(table[rank, PHASES.index(phase)]), others, kimg, phase,
            )  # fmt: skip
        return scalars

    def describe(self) -> str | None:
        if self.worst is None or self.worst[1] < 0:
            return None
        ratio, rank, phase = self.worst
        return f"largest skew between ranks: {ratio:.2f}× (rank {rank}, {phase} phase)"


def _ratio(values: list[float], rank: int) -> float:
    others = statistics.median(v for r, v in enumerate(values) if r != rank)
    return values[rank] / others if others > 0 else 1.0
