"""Run the real entry points the way users do: one process, accelerate launch (DDP / DeepSpeed).

A one-process run (`run("single", …)`, `module(…)`) is a real process of its own — its own pid,
argv, environment, working directory, stdout/stderr and exit status (negative when a signal killed
it) — but it starts warm: multiprocessing's fork server has imported torch (and torch._dynamo, which
the first optimizer step imports), pydantic, Accelerate and TensorBoard once, and forks each run from
there, so a run does not spend ≈ 3 CPU-s on those imports before its first line. lfbm_dist itself is
imported fresh in every run, after its environment is set (fault switches are read at import).
The launcher tests (accelerate launch, torchrun, Slurm, two nodes), the signal tests, the console
scripts and README's commands start cold, as users start them. LFBM_TEST_COLD=1 starts every run cold.
"""

import atexit
import faulthandler
import io
import multiprocessing
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from conftest import PYTHON, ROOT

ACCELERATE = str(Path(PYTHON).parent / "accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(kind: str, *args: str) -> list[str]:
    if kind == "single":
        return [PYTHON, "-m", "lfbm_dist.train", *args]
    common = [
        "launch",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    if kind.startswith("ddp"):  # ddp2, ddp4: DDP on that many gloo ranks
        backend = ["--multi_gpu", "--num_processes", kind[3:]]
    elif kind.startswith("zero"):  # zero1, zero2 (2 ranks), zero2_1, zero2_4: stage _ ranks
        stage, _, procs = kind[4:].partition("_")
        backend = ["--use_deepspeed", "--num_processes", procs or "2", "--zero_stage", stage]
    else:
        raise ValueError(kind)
    return [ACCELERATE, *common, *backend, "lfbm_dist/train.py", *args]


def env(**extra: str) -> dict:
    e = dict(os.environ)
    # DeepSpeed JIT-compiles a CPU comm op on first use (~40 s): cache it outside the clone so
    # later CI runs on the same machine reuse it.
    ext_dir = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/lfbm_dist/torch_extensions"))
    e.update(
        {"OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": ext_dir, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    )
    # A run that hangs is sent SIGABRT at its timeout (captured(), _python()): faulthandler then writes
    # every thread's stack to its stderr, and the test's failure shows where it hung.
    e["PYTHONFAULTHANDLER"] = "1"
    # The environment's bin/ first, as in an activated shell (README's tests run that way): torch then
    # builds DeepSpeed's op with the environment's ninja in both, and ninja versions hash their build
    # commands differently, so mixing the system's ninja with it rebuilt the op (≈ 40 s) at every switch.
    e["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), e.get("PATH", "")])
    e.update(extra)
    return e


def run(kind: str, *args: str, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    if kind == "single":
        return module("lfbm_dist.train", *args, timeout=timeout, **extra_env)
    return captured(command(kind, *args), timeout, env(**extra_env))


class HungRun(subprocess.TimeoutExpired):
    """A run that did not end in time; its message carries the end of its stderr, where faulthandler
    has written every thread's stack just before the kill, so the failure names what hung."""

    def __str__(self) -> str:
        err = self.stderr.decode(errors="replace") if isinstance(self.stderr, bytes) else self.stderr or ""
        return f"{super().__str__()}\n--- its stderr's end (thread stacks at the timeout) ---\n{err[-6000:]}"


def captured(cmd: list[str], timeout: float, environ: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, timeout=timeout), except that a run past
    its timeout first gets SIGABRT, on which faulthandler (PYTHONFAULTHANDLER, set by env()) dumps
    every thread's stack to stderr, and then HungRun is raised with that output."""
    with subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGABRT)
            try:
                out, err = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            raise HungRun(cmd, timeout, out, err) from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


# Imported once in the fork server; none of them reads a variable the tests vary at import time.
WARM_MODULES = ["torch", "torch._dynamo", "numpy", "pydantic", "yaml", "safetensors.torch", "PIL.Image"]
WARM_MODULES += ["accelerate", "torch.utils.tensorboard", "torchvision", "tqdm"]
_server = None


def _warm():
    """The fork-server context, started on first use (None: start cold)."""
    global _server
    if os.environ.get("LFBM_TEST_COLD") == "1":
        return None
    if _server is None:
        _server = multiprocessing.get_context("forkserver")
        _server.set_forkserver_preload(WARM_MODULES)
    return _server


def module(
    name: str, *args: str, timeout: int = 600, cold: bool = False, **extra_env: str
) -> subprocess.CompletedProcess:
    """`python -m name args` in ROOT with env(**extra_env), as subprocess.run(capture_output=True) would.
    cold=True starts a new interpreter, for runs whose environment a preloaded module reads at its import."""
    return _python(["-m", name], list(args), timeout, cold, extra_env)


def script(path: str, *args: str, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """`python path args` (path relative to ROOT), likewise."""
    return _python([path], list(args), timeout, False, extra_env)


def finished_run(run_dir: Path, *args: str, **extra_env: str) -> Path:
    """run_dir after a one-process training run with args that must succeed (its stderr's end if not)."""
    proc = run("single", *args, f"train.run_dir={run_dir}", **extra_env)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return run_dir


def _python(
    target: list[str], args: list[str], timeout: int, cold: bool, extra_env: dict
) -> subprocess.CompletedProcess:
    cmd = [PYTHON, *target, *args]
    ctx = None if cold else _warm()
    if ctx is None:
        return captured(cmd, timeout, env(**extra_env))
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        out.touch()
        err.touch()
        proc = ctx.Process(target=_as_main, args=(target, args, env(**extra_env), str(ROOT), str(out), str(err)))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            os.kill(proc.pid, signal.SIGABRT)  # faulthandler (enabled in _as_main) dumps every thread's stack
            proc.join(10)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
            raise HungRun(cmd, timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess(cmd, proc.exitcode, out.read_text(), err.read_text())


def _as_main(target, args, environ, cwd, out_path, err_path):  # in the forked process
    """What `python -m name args` (target ["-m", name]) or `python path args` (target [path]) does,
    from the fork server's warm interpreter: the environment, working directory, argv and
    stdout/stderr of the run; on the way out what CPython's exit does, in its order (below); then
    the exit status."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    for fd, path in ((1, out_path), (2, err_path)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), encoding="utf-8", write_through=True)
    if environ.get("PYTHONFAULTHANDLER"):  # read at start-up by a new interpreter; this one is already running
        faulthandler.enable(sys.stderr, all_threads=True)
    is_script = target[0] != "-m"
    sys.argv = [target[-1], *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(target[0])) if is_script else cwd)
    multiprocessing.set_start_method(None, force=True)  # the platform's default again (fork), as in a new process
    code = 0
    try:
        if is_script:
            runpy.run_path(target[0], run_name="__main__")
        else:
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # CPython's exit, in its order (Py_FinalizeEx): threading._shutdown() first runs the hooks registered
    # with threading._register_atexit — concurrent.futures tells its ThreadPoolExecutor workers to stop
    # there — and only then joins the non-daemon threads; then the atexit functions. Joining the threads
    # first waited forever on any executor left alive (torch.compile's, on a cold compile cache).
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
