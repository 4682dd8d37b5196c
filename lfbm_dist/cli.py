"""What every command line shares: key=value overrides with the same help, and one line per failure.

A known failure (bad config, data, checkpoint, launch, a stopped peer, a graceful stop) is printed as
one line naming the problem and the fix, with exit status 2 (130/143 after a signal). Anything else
is a bug: one line says so and where its full traceback was written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from . import logs
from .errors import GracefulStop, LfbmError

OVERRIDES_HELP = (
    "config overrides as key=value, e.g. langevin.num_steps=40 eval.fid_num_samples=2000 "
    "(every key: configs/*.yaml, lfbm_dist/config.py)"
)


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)


def _rank_prefix() -> str:
    """'[rank R] ' when several processes share the console."""
    import os

    return f"[rank {os.environ.get('RANK', '0')}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def run(main: Callable[[], int | None]) -> int:
    """Call a command's body; turn failures into one line and an exit status."""
    try:
        return int(main() or 0)
    except GracefulStop as stop:
        if str(stop):
            logging.getLogger(logs.LOGGER).warning("%s", stop)
        return stop.code
    except LfbmError as exc:
        if exc.same_on_every_rank:  # a config error: said once, by rank 0
            if int(os.environ.get("RANK", "0")) == 0:
                _say(f"error: {exc}")
        else:
            _say(f"{_rank_prefix()}error: {exc}")
        _quiet_from_here(_to_log_file())
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — Python flushes stdout again at exit
        return 0
    except Exception as exc:  # a bug: one line here, the traceback where it can be read
        where = _to_log_file()
        if where is None:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        where_text = f" (full traceback in {where})" if where else ""
        _say(f"{_rank_prefix()}error: unexpected {type(exc).__name__}: {first}{where_text}")
        _quiet_from_here(where)
        return 1


def _say(line: str) -> None:
    """One line to stderr in one write: ranks sharing the console must not interleave mid-line."""
    sys.stderr.flush()
    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode(errors="replace"))
    except (AttributeError, OSError, ValueError):  # a stream without a file (a test's capture): print
        print(line, file=sys.stderr)


def _quiet_from_here(log_file: Path | None) -> None:
    """After a launched rank's first error line, the rest of what the process writes to stderr — C++
    warnings with stack dumps from torch.distributed's store and process group as they fail at exit,
    tracebacks of threads — goes to its log file, not the console: the first line is the cause."""
    if log_file is None or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    try:
        sys.stderr.flush()
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 2)
        os.close(fd)
    except OSError:
        pass  # the console keeps it: a noisy exit, not a lost line


def _to_log_file() -> Path | None:
    """Append the current exception's traceback to this process's log file, if there is one."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(traceback.format_exc())
            handler.flush()
            return Path(handler.baseFilename)
    return None
