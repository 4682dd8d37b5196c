"""What the launcher did: how many processes it asked for, and the command line that started the run."""

from __future__ import annotations

import os
import sys

from ...errors import LfbmError


class LaunchError(LfbmError, RuntimeError):
    """The launcher and the process group disagree (e.g. a silent one-process run)."""


def _parent_cmdline() -> list[str]:
    try:
        import psutil

        return psutil.Process(os.getppid()).cmdline()
    except Exception:  # no psutil, or no permission
        return []


def _flag(argv: list[str], *names: str) -> str | None:
    """The value of the first of `names` in a command line (`--name VALUE` or `--name=VALUE`)."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.partition("=")[2]
    return None


def requested_processes() -> int | None:
    """`accelerate launch --cpu --num_processes N` starts ONE process and says nothing; the only
    trace of N is the launcher's own command line (our parent process), read with psutil because
    no launcher variable carries it."""
    if os.environ.get("LFBM_EXPECTED_WORLD_SIZE", "").isdigit():
        return int(os.environ["LFBM_EXPECTED_WORLD_SIZE"])
    if "ACCELERATE_USE_CPU" not in os.environ or "WORLD_SIZE" in os.environ:
        return None
    value = _flag(_parent_cmdline(), "--num_processes", "--num-processes")
    return int(value) if value and value.isdigit() else None


def check_world_size(world_size: int) -> None:
    expected = requested_processes()
    if expected is not None and expected != world_size:
        raise LaunchError(
            f"launcher asked for {expected} processes but the process group has {world_size}; on CPU use "
            "`accelerate launch --multi_gpu --num_processes N` (`--cpu` silently runs one process) or torchrun"
        )


def launcher_command(argv: list[str], parent: list[str] | None = None) -> list[str]:
    """The command line that started this run: the launcher's (accelerate launch, torchrun) when one
    started us, else this process's own, as a user would type it. parent: the parent process's command
    line (None: read it)."""
    script = os.path.basename(argv[0]) if argv else ""
    parent = _parent_cmdline() if parent is None else parent
    launched = any(x in " ".join(parent[:3]) for x in ("accelerate", "torchrun", "torch.distributed.run"))
    if "WORLD_SIZE" in os.environ and launched and any(a.endswith(script) for a in parent[1:]):
        # `python /path/bin/accelerate launch …` is typed as `accelerate launch …`; but
        # `python -m accelerate.commands.launch …` needs its interpreter to run as printed.
        python = os.path.basename(parent[0]).startswith("python")
        return parent[1:] if python and parent[1:2] != ["-m"] else parent
    if script in ("train.py", "__main__.py"):
        return [sys.executable, "-m", "lfbm_dist.train", *argv[1:]]
    return list(argv)


def rendezvous_endpoint() -> tuple[str, int] | None:
    """The rendezvous endpoint our agent was given (torchrun --rdzv-endpoint, accelerate launch
    --main_process_ip/--main_process_port), read from its command line: no launcher variable carries it."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    argv = _parent_cmdline()
    endpoint = _flag(argv, "--rdzv-endpoint", "--rdzv_endpoint")
    if endpoint:
        host, _, port = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "29400")
        return (host, int(port)) if port.isdigit() else None
    host, port = _flag(argv, "--main_process_ip", "--main-process-ip"), _flag(argv, "--main_process_port")
    return (host, int(port)) if host and port and port.isdigit() else None


def lost_rendezvous() -> str | None:
    """ "HOST:PORT" of the job's rendezvous when it no longer answers; None when it does or is unknown.

    Asked only after a collective failed. torch elastic's rendezvous lives in the agent of one node
    (c10d: the --rdzv-endpoint host); if it is gone, so is that node, and no agent can re-form the
    job (the limit README states)."""
    import socket

    where = rendezvous_endpoint()
    if where is None:
        return None
    try:
        with socket.create_connection(where, timeout=3):
            return None
    except OSError:
        return f"{where[0]}:{where[1]}"


_STORE = None  # the job's key-value store, once join_process_group has run


def join_process_group(backend: str, timeout) -> None:
    """Form the process group (once; Accelerate and DeepSpeed use an existing group as it is) and keep
    the job's key-value store for what must not go through the group itself: the run directory's
    lock verdict (before the group is used) and the watchdog (while the group may be stuck)."""
    global _STORE
    import torch.distributed as dist

    if dist.is_initialized():
        return
    # Before the group exists: importing torch._dynamo (which a compile, torchvision or a meta-device
    # build does lazily) keeps a reference to every object alive at that moment (torch 2.13), so a group
    # made earlier outlives destroy_process_group and its gloo threads are never joined. One of them
    # still releasing the last collective's tensor as the interpreter finalizes aborts a finished
    # process ("terminate called without an active exception", exit −6; 2 of 30 benchmark runs).
    import torch._dynamo  # noqa: F401

    if not init_elastic_process_group(backend, timeout):
        if backend == "nccl":
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timeout)  # env:// (a launcher without torch elastic's agent)
        from torch.distributed import distributed_c10d

        _STORE = distributed_c10d._get_default_store()


def job_store():
    """The job's key-value store (torch.distributed's), None with no process group."""
    return _STORE


def init_elastic_process_group(backend: str, timeout) -> bool:
    """Under torch elastic's agent, join the process group through its store with a prefix per attempt.

    The agent keeps one store for all the restarts of its workers (TORCHELASTIC_USE_AGENT_STORE) and
    the default env:// rendezvous adds no prefix, so restarted workers may read the dead attempt's
    gloo addresses and fail to connect ("connectFullMesh ... Connection refused"; seen with torchrun
    --max-restarts on torch 2.13). Accelerate and DeepSpeed use an existing process group as it is.
    True if this made the group."""
    import torch.distributed as dist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return False
    world_size, attempt = int(os.environ["WORLD_SIZE"]), os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout
    )
    global _STORE
    _STORE = dist.PrefixStore(f"/lfbm_dist/attempt_{attempt}", store)
    dist.init_process_group(
        backend,
        store=_STORE,
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        timeout=timeout,
    )
    return True
