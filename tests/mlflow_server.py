"""A real MLflow tracking server on a loopback port (`mlflow server`, sqlite backend, artifacts proxied
over HTTP), for the tests that log to it as a user's cluster job would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from launch import PYTHON, env, free_port

START_LIMIT_S = 180  # a generous cap on a cold start (imports, database migration) on a busy CI machine


@contextlib.contextmanager
def mlflow_server(folder: Path):
    """Yields the server's http:// URI once its /health answers; stops it (and its workers) after."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mlflow = str(Path(PYTHON).parent / "mlflow")
    cmd = [mlflow, "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--workers", "1"]
    cmd += ["--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while not _healthy(uri):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False
