"""Fault injection for the test suite, driven by environment variables (all unset in normal runs).

The product knows nothing of it: `from_env()` gives the run its hooks object (training/hooks.py),
FaultHooks when a variable below is set, else the no-op hooks; the trainer and the snapshot writer
call it at their named points. Nothing here patches a method of the product.

LFBM_FAULT_NAN_STEPS=3,4         make the latents of these steps non-finite (non-finite guard tests)
LFBM_FAULT_NAN_GRAD_STEPS=2      make every gradient of these steps NaN (guarded optimizer step tests)
LFBM_FAULT_KILL_IN_PRUNE=1       SIGKILL this process while it removes an old checkpoint
LFBM_FAULT_FAIL_IMAGES=1         raise while logging the end-of-run image grids (after the final checkpoint)
LFBM_TEST_DUMP_LOADED=DIR        after a resume, write the loaded state (full) to DIR as a checkpoint's state files
LFBM_TEST_KEYS_DIR=DIR           append each micro-batch's sample keys (and elastic attempt) to DIR/keys_rank{R}.jsonl
LFBM_FAULT_STEP_SLEEP=0.2        sleep this long after each step (lets a test SIGKILL mid-run)
LFBM_FAULT_KILL_IN_SAVE=12800    SIGKILL this process inside the checkpoint write at this many
                                 images seen, after the shards are written and before the rename
LFBM_FAULT_SLOW_WRITE_S=1.5      each rank's snapshot writer waits this long before writing its part (a slow disk)
LFBM_FAULT_RAISE_ONCE=5:1        rank 1 raises after step 5, in the first attempt of an elastic job only
                                 (TORCHELASTIC_RESTART_COUNT 0): the agent's restart must recover
LFBM_FAULT_COMPILE_FAIL_AT=2     the compiler "fails" at the second Langevin chain graph this process compiles
                                 (inference.GRAPHS' before_compile hook: inside the fallback, as a real one)
LFBM_FAULT_HANG_AT=5:1           rank 1 blocks (sleeps an hour) after step 5, inside the loop: a hung rank
LFBM_FAULT_SLOW_RANK=1:0.5       rank 1 sleeps 0.5 s after each step's chains: a straggler in its Langevin phase
LFBM_FAULT_RECORD_OOM_ABOVE=4    recording a Langevin chain graph of more than 4 chains runs out of memory
                                 (inference.GRAPHS' before_record hook: where a real one would)
"""

from __future__ import annotations

import os
import signal
import time

from .hooks import NO_HOOKS, Hooks


def _ints(name: str) -> set[int]:
    return {int(v) for v in os.environ.get(name, "").split(",") if v.strip()}


NAN_STEPS = _ints("LFBM_FAULT_NAN_STEPS")
NAN_GRAD_STEPS = _ints("LFBM_FAULT_NAN_GRAD_STEPS")
KILL_IN_PRUNE = os.environ.get("LFBM_FAULT_KILL_IN_PRUNE") == "1"
FAIL_IMAGES = os.environ.get("LFBM_FAULT_FAIL_IMAGES") == "1"
STEP_SLEEP = float(os.environ.get("LFBM_FAULT_STEP_SLEEP", "0") or 0)
KILL_IN_SAVE = _ints("LFBM_FAULT_KILL_IN_SAVE")
SLOW_WRITE_S = float(os.environ.get("LFBM_FAULT_SLOW_WRITE_S", "0") or 0)
RAISE_ONCE = tuple(int(v) for v in os.environ.get("LFBM_FAULT_RAISE_ONCE", "").split(":") if v.strip())
COMPILE_FAIL_AT = int(os.environ.get("LFBM_FAULT_COMPILE_FAIL_AT", "0") or 0)
RECORD_OOM_ABOVE = int(os.environ.get("LFBM_FAULT_RECORD_OOM_ABOVE", "0") or 0)
HANG_AT = tuple(int(v) for v in os.environ.get("LFBM_FAULT_HANG_AT", "").split(":") if v.strip())
SLOW_RANK = tuple(float(v) for v in os.environ.get("LFBM_FAULT_SLOW_RANK", "").split(":") if v.strip())


class InjectedFailure(RuntimeError):
    pass


class FaultHooks(Hooks):
    """The faults the environment asks for, at the trainer's and the writer's hook points."""

    def after_infer(self, step: int, rank: int, micro_batches: list) -> None:
        for micro, m in enumerate(micro_batches):
            record_keys(step, rank, micro, m.batch.positions, m.batch.keys)
        if step in NAN_STEPS:  # a non-finite latent
            micro_batches[0].latents[0, 0] = float("nan")
        if SLOW_RANK and rank == int(SLOW_RANK[0]):
            time.sleep(SLOW_RANK[1])

    def loss(self, loss, step: int):
        return loss * float("nan") if step in NAN_GRAD_STEPS else loss  # every gradient NaN, on any backend

    def after_step(self, step: int, rank: int) -> None:
        if STEP_SLEEP > 0:
            time.sleep(STEP_SLEEP)
        if HANG_AT and (step, rank) == HANG_AT:
            time.sleep(3600)  # blocked inside the training loop, far past any hang bound
        if RAISE_ONCE and (step, rank) == RAISE_ONCE and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            raise InjectedFailure(f"injected failure of rank {rank} after step {step}")

    def before_images(self) -> None:
        if FAIL_IMAGES:
            raise RuntimeError("injected failure while logging images")

    def after_resume(self, engine, plain, cfg, averages=None) -> None:
        dump = os.environ.get("LFBM_TEST_DUMP_LOADED")
        if dump:  # a test compares what was loaded with what was saved, as state files
            from pathlib import Path

            from . import checkpoint

            loaded = engine.full_state(plain)  # collective
            loaded.update(averages.state() if averages is not None else {})
            if engine.is_main:
                Path(dump).mkdir(parents=True, exist_ok=True)
                checkpoint.write_state(Path(dump), loaded, cfg.train.snapshot_shard_mb)

    def before_compile(self, ordinal: int) -> None:
        if ordinal == COMPILE_FAIL_AT:
            raise InjectedFailure(f"injected compiler failure at chain graph {ordinal}")

    def before_record(self, chains: int) -> None:
        if RECORD_OOM_ABOVE and chains > RECORD_OOM_ABOVE:
            import torch

            raise torch.OutOfMemoryError(f"injected: out of memory recording a chain graph of {chains} chains")

    def before_write(self) -> None:
        if SLOW_WRITE_S > 0:
            time.sleep(SLOW_WRITE_S)

    def in_commit(self, images_seen: int) -> None:
        if images_seen in KILL_IN_SAVE:
            os.kill(os.getpid(), signal.SIGKILL)

    def in_prune(self) -> None:
        if KILL_IN_PRUNE:
            os.kill(os.getpid(), signal.SIGKILL)


def from_env() -> Hooks:
    """FaultHooks if any fault variable is set, else the no-op hooks of a normal run."""
    names = [n for n in os.environ if n.startswith(("LFBM_FAULT_", "LFBM_TEST_DUMP_LOADED", "LFBM_TEST_KEYS_DIR"))]
    return FaultHooks() if names else NO_HOOKS


def record_keys(step: int, rank: int, micro: int, positions: list[int], keys: list[str] | None) -> None:
    folder = os.environ.get("LFBM_TEST_KEYS_DIR")
    if folder and keys is not None:
        import json

        with open(os.path.join(folder, f"keys_rank{rank}.jsonl"), "a") as f:
            attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # an elastic restart re-does steps
            row = {"step": step, "micro": micro, "positions": positions, "keys": keys, "attempt": attempt}
            f.write(json.dumps(row) + "\n")
