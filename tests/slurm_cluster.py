"""A real single-node Slurm cluster for the tests (slurmctld + slurmd + munge from Debian).

Installs the packages with apt-get if needed and starts the daemons as root in a private state
directory; everything is stopped by pid file afterwards. Skips (with the reason) where that is
impossible: not root, no apt-get, or the daemons do not come up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


class SlurmUnavailable(RuntimeError):
    pass


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def ensure_installed() -> None:
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm is not installed and the tests are not root (cannot apt-get install it)")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("Slurm is not installed and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update", "-qq"], env=env, timeout=600)
    proc = _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=env, timeout=900)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {proc.stderr.strip()[-300:]}")


def _node_line() -> str:
    out = _run(["slurmd", "-C"], timeout=60).stdout.splitlines()[0]
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    memory = int(int(fields.get("RealMemory", "2000")) * 0.9)
    return f"NodeName={fields['NodeName']} CPUs={fields['CPUs']} RealMemory={memory} State=UNKNOWN"


class SlurmCluster:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.conf = workdir / "slurm.conf"

    def start(self) -> SlurmCluster:
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmctld/slurmd needs root")
        ensure_installed()
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        node = _node_line()
        host = node.split()[0].split("=", 1)[1]
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=lfbmtest",
                    f"SlurmctldHost={host}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # A requeued job may start again only after the step credential's lifetime (120 s by
                    # default): the preemption test would wait that long for nothing.
                    "AuthInfo=cred_expire=10",
                    "MpiDefault=none",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "JobRequeue=1",
                    "KillWait=10",
                    "MinJobAge=600",
                    f"StateSaveLocation={self.dir}/state",
                    f"SlurmdSpoolDir={self.dir}/spool",
                    f"SlurmctldPidFile={self.dir}/slurmctld.pid",
                    f"SlurmdPidFile={self.dir}/slurmd.pid",
                    f"SlurmctldLogFile={self.dir}/slurmctld.log",
                    f"SlurmdLogFile={self.dir}/slurmd.log",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    node,
                    f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        os.environ["SLURM_CONF"] = str(self.conf)
        if _run(["pgrep", "-x", "munged"]).returncode != 0:
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], timeout=60)
        for daemon in ("slurmctld", "slurmd"):
            proc = _run([daemon, "-f", str(self.conf)], timeout=60)
            if proc.returncode != 0:
                raise SlurmUnavailable(f"{daemon} did not start: {proc.stderr.strip()[-300:]}")
        deadline = time.time() + 60
        while time.time() < deadline:
            out = _run(["sinfo", "-h", "-o", "%t"], timeout=30).stdout.strip()
            if out in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        raise SlurmUnavailable(f"the Slurm node never became idle (sinfo: {out!r})")

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            path = self.dir / pid_file
            if path.is_file():
                try:
                    os.kill(int(path.read_text().strip()), signal.SIGTERM)
                except (ValueError, ProcessLookupError):
                    pass
        os.environ.pop("SLURM_CONF", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def squeue_ids() -> list[str]:
    return _run(["squeue", "-h", "-o", "%i"], timeout=30).stdout.split()
