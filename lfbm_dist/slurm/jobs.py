"""What runs inside a Slurm allocation: one task per GPU (or CPU rank), rendezvous from the Slurm
environment through submitit, then the package's own entry functions.

Every rank is a Slurm task, so Slurm signals, kills and requeues all ranks together; srun's
--kill-on-bad-exit stops every rank at once when one fails. Requeue: submitit asks Slurm for USR2
`--signal-delay` seconds before the time limit; on it (or on preemption) rank 0 requeues the job
(bounded by --max-requeues, listed in RUN_DIR/requeues.json) and every rank restarts with
train.resume=auto from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import state_schema as schema


def export_rendezvous() -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the Slurm environment (submitit)."""
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment()
    env.export(set_cuda_visible_devices=False)
    if env.world_size == 1:  # one process: no process group wanted
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            os.environ.pop(var, None)


class TrainJob:
    """Callable submitted to Slurm; `checkpoint` is submitit's requeue hook."""

    def __init__(self, config: str, overrides: list[str], run_dir: str, max_requeues: int, requeues: int = 0):
        self.config, self.overrides, self.run_dir = config, list(overrides), run_dir
        self.max_requeues, self.requeues = max_requeues, requeues

    def command(self) -> list[str]:
        return [
            "lfbm-train",
            "--config",
            self.config,
            *self.overrides,
            f"train.run_dir={self.run_dir}",
            "train.resume=auto",
        ]

    def __call__(self) -> dict:
        export_rendezvous()
        from .. import logs
        from ..config import load_config
        from ..training.session import train

        logs.setup()
        cfg = load_config(self.config, [*self.overrides, f"train.run_dir={self.run_dir}", "train.resume=auto"])
        state = train(cfg, self.command())
        return {
            "run_dir": self.run_dir,
            schema.STEPS_DONE: state[schema.STEPS_DONE],
            schema.IMAGES_SEEN: state[schema.IMAGES_SEEN],
            "requeues": self.requeues,
        }

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on rank 0 when the time limit nears or the job is preempted."""
        import submitit

        log = Path(self.run_dir) / "requeues.json"
        history = json.loads(log.read_text()) if log.is_file() else []
        if self.requeues >= self.max_requeues:
            print(f"lfbm_dist: not requeueing: --max-requeues {self.max_requeues} reached", flush=True)
            return None
        history.append({"requeue": self.requeues + 1, "job": os.environ.get("SLURM_JOB_ID")})
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(json.dumps(history, indent=2))
        print(
            f"lfbm_dist: requeue {self.requeues + 1}/{self.max_requeues}; resuming from the newest checkpoint",
            flush=True,
        )
        return submitit.helpers.DelayedSubmission(
            TrainJob(self.config, self.overrides, self.run_dir, self.max_requeues, self.requeues + 1)
        )


class ElasticTrainJob(TrainJob):
    """--elastic MIN:MAX: one task per node runs torch elastic's agent (torchrun) over the node's
    workers, all agents meeting at a c10d rendezvous on the first node. When a rank fails the agents
    restart the workers, and when a node is lost the survivors re-form at the smaller world size; the
    restarted workers resume from the newest complete checkpoint by themselves (training/rundir.py).
    Slurm's --no-kill keeps the allocation when a node fails; srun does not kill the others."""

    RDZV_PORT = 29400

    def __init__(self, config, overrides, run_dir, max_requeues, nodes: tuple[int, int], procs_per_node: int,
                 max_restarts: int, requeues: int = 0):  # fmt: skip
        super().__init__(config, overrides, run_dir, max_requeues, requeues)
        self.nodes, self.procs_per_node, self.max_restarts = nodes, procs_per_node, max_restarts

    def agent_command(
        self, head: str = "<first node>", job_id: str = "<job id>", is_host: bool | None = None
    ) -> list[str]:
        host = "<true on the first node>" if is_host is None else ("true" if is_host else "false")
        return [
            "python", "-m", "torch.distributed.run",
            "--nnodes", f"{self.nodes[0]}:{self.nodes[1]}", "--nproc_per_node", str(self.procs_per_node),
            "--max-restarts", str(self.max_restarts), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{head}:{self.RDZV_PORT}", "--rdzv-id", f"lfbm-{job_id}",
            "--rdzv-conf", f"is_host={host}",  # said, not guessed: a node's name may not resolve to itself
            "-m", "lfbm_dist.train", *self.command()[1:],
        ]  # fmt: skip

    def __call__(self) -> dict:
        import subprocess
        import sys

        import submitit

        env = submitit.JobEnvironment()
        cmd = self.agent_command(env.hostnames[0], str(env.job_id), env.node == 0)
        cmd[0] = sys.executable
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(var, None)  # the agent sets its workers' own
        code = subprocess.run(cmd).returncode
        if code:
            raise RuntimeError(f"the elastic agent on node {env.node} exited with {code}")
        state = schema.trainer_state(self.run_dir)
        done = {k: state[k] for k in (schema.STEPS_DONE, schema.IMAGES_SEEN)}
        return {"run_dir": self.run_dir, **done, "requeues": self.requeues}

    def checkpoint(self, *args, **kwargs):
        delayed = super().checkpoint(*args, **kwargs)
        if delayed is None:
            return None
        job = ElasticTrainJob(self.config, self.overrides, self.run_dir, self.max_requeues, self.nodes,
                              self.procs_per_node, self.max_restarts, self.requeues + 1)  # fmt: skip
        import submitit

        return submitit.helpers.DelayedSubmission(job)


class EvalJob:
    def __init__(self, run_dir: str, metrics: str, overrides: list[str]):
        self.run_dir, self.metrics, self.overrides = run_dir, metrics, list(overrides)

    def command(self) -> list[str]:
        return ["lfbm-evaluate", "--run", self.run_dir, "--metrics", self.metrics, *self.overrides]

    def __call__(self) -> int:
        export_rendezvous()
        from ..evaluate import main as evaluate_main

        code = evaluate_main(["--run", self.run_dir, "--metrics", self.metrics, *self.overrides])
        if code:
            raise RuntimeError(f"evaluation of {self.run_dir} failed with exit code {code}")
        return code
