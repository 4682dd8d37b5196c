"""Run the real entry points the way users do: one process, accelerate launch (DDP / DeepSpeed).

A one-process run (`run("single", …)`, `module(…)`) is a real process of its own — its own pid,
argv, environment, working directory, stdout/stderr and exit status (negative when a signal killed
it) — but it starts warm: multiprocessing's fork server has imported torch (and torch._dynamo, which
the first optimizer step imports), pydantic, Accelerate and TensorBoard once, and forks each run from
there, so a run does not spend ≈ 3 CPU-s on those imports before its first line. lfbm_dist itself is
imported fresh in every run, after its environment is set (fault switches are read at import).
A launched run (`run("ddp2", …, warm_ranks=True)`) forks its ranks warm too, each with the environment
the real `accelerate launch` gives that rank (read once from a real launch): the multi-rank tests whose
subject is training, not the launcher, run without ≈ 10 CPU-s of launcher and imports per run (the
suite is CPU-bound on CI's two cores). The launcher tests (accelerate launch, torchrun, Slurm, two
nodes), the signal and fault tests, the console scripts and README's commands start cold, as users
start them. LFBM_TEST_COLD=1 starts every run cold.
"""

import atexit
import faulthandler
import io
import json
import multiprocessing
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

from conftest import PYTHON, ROOT

ACCELERATE = str(Path(PYTHON).parent / "accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ok(proc):
    """proc, asserted to have exited 0; else its exit status and the ends of its output, in full (a str
    message: pytest shortens any other kind to a line, which hid a failing run's own error)."""
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\n--- stdout (end) ---\n{proc.stdout[-2000:]}\n"
        f"--- stderr (end) ---\n{proc.stderr[-6000:]}"
    )
    return proc


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
    e.update({k: v for k, v in extra.items() if v is not None})
    for name in [k for k, v in extra.items() if v is None]:  # None: the variable is not set at all
        e.pop(name, None)
    return e


def run(kind: str, *args: str, timeout: int = 600, warm_ranks: bool = False, **extra_env: str):
    """A training run; warm_ranks=True: a launched kind's ranks start warm (launched(), below)."""
    if kind == "single":
        return module("lfbm_dist.train", *args, timeout=timeout, **extra_env)
    return launch_script(kind, "lfbm_dist/train.py", *args, timeout=timeout, warm_ranks=warm_ranks, **extra_env)


def launch_script(kind: str, script: str, *args: str, timeout: float = 600, warm_ranks: bool = False, **extra_env):
    """`accelerate launch` (command(kind)) of script; warm_ranks=True: its ranks start warm (launched())."""
    if warm_ranks and _warm() is not None:
        return launched(kind, list(args), timeout, extra_env, script)
    cmd = command(kind, *args)
    cmd[cmd.index("lfbm_dist/train.py")] = script
    return captured(cmd, timeout, env(**extra_env))


_LAUNCHER_ENV: dict[str, list[dict[str, str]]] = {}


def _launcher_env(kind: str) -> list[dict[str, str]]:
    """What `accelerate launch` (command(kind)) adds to each rank's environment, read once per kind and
    test process from a real launch of tests/dump_env.py."""
    if kind not in _LAUNCHER_ENV:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = command(kind)
            cmd[cmd.index("lfbm_dist/train.py")] = "tests/dump_env.py"
            given = env(LFBM_TEST_OUT=tmp)
            proc = captured(cmd, 300, given)
            assert proc.returncode == 0, proc.stderr[-3000:]
            ranks = sorted(Path(tmp).glob("rank*.json"), key=lambda p: int(p.stem[4:]))
            seen = [json.loads(p.read_text()) for p in ranks]
        _LAUNCHER_ENV[kind] = [{k: v for k, v in r.items() if given.get(k) != v} for r in seen]
    return _LAUNCHER_ENV[kind]


def launched(
    kind: str, args: list[str], timeout: float, extra_env: dict, script: str = "lfbm_dist/train.py"
) -> subprocess.CompletedProcess:
    """`accelerate launch` of `kind` (DDP or DeepSpeed on N gloo ranks), its ranks forked from the fork
    server, each with exactly the environment the real launcher gives that rank (_launcher_env; a fresh
    port and run id) and the launcher's stop rule (one rank fails: the others get SIGTERM, then SIGKILL
    after 30 s). Same ranks, process group, backend and arguments, without the launcher's ≈ 4 CPU-s and
    each rank's ≈ 2.5 CPU-s of imports. The ranks' outputs are joined in rank order (a launcher interleaves
    them). What only a launcher does (restarts, its own signals, the first error line on a shared
    terminal, the resume command it is named in) is tested through the real ones; so are refusals:
    only rank 0 prints a settings error, and a rank that exits first gets the others stopped here
    sooner than the real agent's monitor would (a refusal test lost rank 0's line this way once)."""
    ctx, port, run_id = _warm(), str(free_port()), uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory() as tmp:
        procs, files = [], []
        for rank, added in enumerate(_launcher_env(kind)):
            e = {**env(**extra_env), **added, "MASTER_PORT": port, "TORCHELASTIC_RUN_ID": run_id}
            e["TORCHELASTIC_USE_AGENT_STORE"] = "False"  # no agent: rank 0 hosts the store (env://)
            e.pop("TORCHELASTIC_ERROR_FILE", None)  # the agent's, in its own temporary folder
            out, err = Path(tmp) / f"out{rank}", Path(tmp) / f"err{rank}"
            out.touch()
            err.touch()
            files.append((out, err))
            procs.append(ctx.Process(target=_as_main, args=([script], args, e, str(ROOT), str(out), str(err))))
            procs[-1].start()
        code = _wait_all(procs, timeout)
        stdout, stderr = "".join(o.read_text() for o, _ in files), "".join(e.read_text() for _, e in files)
    cmd = command(kind, *args)
    cmd[cmd.index("lfbm_dist/train.py")] = script
    if code is None:
        raise HungRun(cmd, timeout, stdout, stderr)
    return subprocess.CompletedProcess(cmd, code, stdout, stderr)


def _wait_all(procs: list, timeout: float) -> int | None:
    """The first non-zero exit status (0 if none); None if they were still running at the timeout
    (each then got SIGABRT, on which faulthandler dumps its threads' stacks)."""
    deadline, stop_by, first = time.monotonic() + timeout, None, 0
    while any(p.exitcode is None for p in procs):
        now = time.monotonic()
        if now > deadline:
            for p in procs:
                if p.exitcode is None:
                    os.kill(p.pid, signal.SIGABRT)
            for p in procs:
                p.join(10)
                if p.exitcode is None:
                    p.kill()
                    p.join()
            return None
        failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
        if failed and stop_by is None:
            first, stop_by = failed[0], now + 30
            for p in procs:
                if p.exitcode is None:
                    os.kill(p.pid, signal.SIGTERM)
        if stop_by is not None and now > stop_by:
            for p in procs:
                if p.exitcode is None:
                    p.kill()
        time.sleep(0.05)
    return first or next((p.exitcode for p in procs if p.exitcode), 0)


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
# DeepSpeed (≈ 2 CPU-s of imports per rank) reads DS_ACCELERATOR at import: env() fixes it to cpu for every run.
WARM_MODULES += ["deepspeed"]
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
    name: str, *args: str, timeout: int = 600, cold: bool = False, cwd: Path = ROOT, **extra_env: str
) -> subprocess.CompletedProcess:
    """`python -m name args` in cwd (ROOT) with env(**extra_env), as subprocess.run(capture_output=True)
    would. cold=True starts a new interpreter, for runs whose environment a preloaded module reads at its
    import."""
    return _python(["-m", name], list(args), timeout, cold, extra_env, cwd)


def script(path: str, *args: str, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """`python path args` (path relative to ROOT), likewise."""
    return _python([path], list(args), timeout, False, extra_env, ROOT)


def finished_run(run_dir: Path, *args: str, **extra_env: str) -> Path:
    """run_dir after a one-process training run with args that must succeed (its stderr's end if not)."""
    proc = run("single", *args, f"train.run_dir={run_dir}", **extra_env)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return run_dir


def _python(
    target: list[str], args: list[str], timeout: int, cold: bool, extra_env: dict, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    cmd = [PYTHON, *target, *args]
    ctx = None if cold else _warm()
    if ctx is None:
        return captured(cmd, timeout, env(**extra_env), cwd)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        out.touch()
        err.touch()
        proc = ctx.Process(target=_as_main, args=(target, args, env(**extra_env), str(cwd), str(out), str(err)))
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
