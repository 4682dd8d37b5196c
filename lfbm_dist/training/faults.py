"""Fault injection for the test suite, driven by environment variables (all unset in normal runs).

The training loop knows nothing of it: `install(trainer)` is its one seam, called once when the
trainer is built; with no variable set it changes nothing. The checkpoint writer's kill points
(in_save, in_prune) and its slow-disk point (before_write) are called where the writer is; the
loaded-state dump's folder (dump_loaded_dir) is read by checkpoint.load.

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
"""

from __future__ import annotations

import os
import signal
import time


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


class InjectedFailure(RuntimeError):
    pass


def install(trainer) -> None:
    """Wrap the trainer's phases (on this instance only) with the faults the environment asks for."""
    if COMPILE_FAIL_AT:
        from ..inference import GRAPHS

        def before_compile(ordinal: int) -> None:
            if ordinal == COMPILE_FAIL_AT:
                raise InjectedFailure(f"injected compiler failure at chain graph {ordinal}")

        GRAPHS.before_compile = before_compile
    if NAN_STEPS or os.environ.get("LFBM_TEST_KEYS_DIR"):
        infer = trainer.infer_latents

        def infer_latents():
            micro_batches = infer()
            if micro_batches is not None:
                for micro, m in enumerate(micro_batches):
                    record_keys(trainer.state.step, trainer.engine.rank, micro, m.batch.positions, m.batch.keys)
                if trainer.state.step in NAN_STEPS:  # a non-finite latent
                    micro_batches[0].latents[0, 0] = float("nan")
            return micro_batches

        trainer.infer_latents = infer_latents
    if NAN_GRAD_STEPS:  # every gradient of the step becomes NaN (any backend: through the loss)
        backward = trainer.engine.backward
        trainer.engine.backward = lambda loss: backward(
            loss * float("nan") if trainer.state.step in NAN_GRAD_STEPS else loss
        )
    if STEP_SLEEP > 0 or RAISE_ONCE:
        learn = trainer.learn

        def learn_then_fault(micro_batches, finite):
            learn(micro_batches, finite)
            after_step(trainer.state.step, trainer.engine.rank)

        trainer.learn = learn_then_fault
    if FAIL_IMAGES:
        show = trainer._images

        def images_then_fail(now):
            images()
            show(now)

        trainer._images = images_then_fail


def after_step(step: int = -1, rank: int = 0) -> None:
    if STEP_SLEEP > 0:
        time.sleep(STEP_SLEEP)
    if RAISE_ONCE and (step, rank) == RAISE_ONCE and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        raise InjectedFailure(f"injected failure of rank {rank} after step {step}")


def in_save(images_seen: int) -> None:
    if images_seen in KILL_IN_SAVE:
        os.kill(os.getpid(), signal.SIGKILL)


def before_write() -> None:
    if SLOW_WRITE_S > 0:
        time.sleep(SLOW_WRITE_S)


def in_prune() -> None:
    if KILL_IN_PRUNE:
        os.kill(os.getpid(), signal.SIGKILL)


def images() -> None:
    if FAIL_IMAGES:
        raise RuntimeError("injected failure while logging images")


def dump_loaded_dir() -> str | None:
    """Where a resume writes the state it loaded (checkpoint.load), if a test asks."""
    return os.environ.get("LFBM_TEST_DUMP_LOADED") or None


def record_keys(step: int, rank: int, micro: int, positions: list[int], keys: list[str] | None) -> None:
    folder = os.environ.get("LFBM_TEST_KEYS_DIR")
    if folder and keys is not None:
        import json

        with open(os.path.join(folder, f"keys_rank{rank}.jsonl"), "a") as f:
            attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # an elastic restart re-does steps
            row = {"step": step, "micro": micro, "positions": positions, "keys": keys, "attempt": attempt}
            f.write(json.dumps(row) + "\n")
