"""The test launcher (tests/launch.py) itself: a warm run (forked from the fork server) ends as a new
interpreter would, and warm and cold starts of the same run agree."""

import textwrap

import launch
import pytest

# Each script exercises one part of how an interpreter ends; run warm and cold, they must agree.
SCRIPTS = {
    # concurrent.futures stops its workers from a threading atexit hook: a launcher that joins the
    # non-daemon threads before running those hooks waits forever (it hung the suite on a cold cache).
    # The pool is held by a module (as torch's compile pool is), so it is not collected at the end.
    "pool_left_alive": """
        import sys
        from concurrent.futures import ThreadPoolExecutor
        sys.modules["concurrent"].kept_pool = pool = ThreadPoolExecutor(2)
        print(pool.submit(sum, [1, 2, 3]).result())
    """,
    "thread_outlives_main": """
        import threading, time
        def late():
            time.sleep(0.5)
            print("thread done", flush=True)
        threading.Thread(target=late).start()
        print("main done")
    """,
    "atexit_after_threads": """
        import atexit, threading, time
        atexit.register(lambda: print("atexit ran"))
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread first", flush=True))).start()
    """,
    "exit_code": """
        import sys
        print("leaving")
        sys.exit(3)
    """,
    "exit_message": """
        raise SystemExit("a one-line error")
    """,
    "uncaught": """
        raise ValueError("boom")
    """,
    "killed": """
        import os, signal
        print("before", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    "argv_and_env": """
        import os, sys
        print(sys.argv[1:], os.environ["LFBM_TEST_VALUE"], os.getcwd() == os.environ["LFBM_TEST_CWD"])
    """,
}


def _script(tmp_path, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(SCRIPTS[name]))
    return path


def test_a_run_that_leaves_a_thread_pool_alive_exits_promptly(tmp_path):
    proc = launch.script(str(_script(tmp_path, "pool_left_alive")), timeout=30)
    assert (proc.returncode, proc.stdout) == (0, "6\n"), proc.stderr


def test_a_hung_run_is_reported_with_its_thread_stacks(tmp_path):
    path = tmp_path / "hang.py"
    path.write_text("import threading\nthreading.Event().wait()\n")
    with pytest.raises(launch.HungRun) as info:
        launch.script(str(path), timeout=3)
    assert "in wait" in str(info.value) and "hang.py" in str(info.value), str(info.value)


def _normalised(proc):
    # The traceback's first frames differ by construction (runpy from the fork server vs the
    # interpreter's own start); what a user reads, the last line, must be the same.
    return proc.returncode, proc.stdout, proc.stderr.strip().splitlines()[-1:]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_warm_and_cold_starts_agree(tmp_path, name):
    path = _script(tmp_path, name)
    runs = []
    for cold in (False, True):
        extra = {"LFBM_TEST_VALUE": "v", "LFBM_TEST_CWD": str(launch.ROOT)}
        proc = launch._python([str(path)], ["a", "b"], 60, cold, extra)
        runs.append(_normalised(proc))
    assert runs[0] == runs[1]


def test_warm_and_cold_training_dry_runs_agree():
    args = ("--config", "configs/test_tiny.yaml", "--dry-run", "train.seed=3")
    warm, cold = (launch.module("lfbm_dist.train", *args, cold=c) for c in (False, True))
    assert warm.returncode == cold.returncode == 0, (warm.stderr[-2000:], cold.stderr[-2000:])
    assert warm.stdout == cold.stdout and "seed: 3" in warm.stdout


@pytest.mark.slow
def test_warm_ranks_train_as_the_real_launcher_does(tmp_path, kind="ddp2"):
    """A launched run with its ranks forked warm (launch.launched) against the same run under the real
    `accelerate launch`: the same start and end lines from rank 0, the same bitwise final state, and a
    bad setting fails both with the same one error line. (Warm DeepSpeed ranks are held to the one-rank
    run's parameters by test_distributed's layouts, as the warm DDP ranks are.)"""
    import torch

    from lfbm_dist.training.checkpoint import latest, read_state

    args = ("--config", "configs/test_tiny.yaml", "train.total_kimg=0.032", "train.batch_per_gpu=4")
    runs = {}
    for warm in (True, False):
        proc = launch.run(kind, *args, f"train.run_dir={tmp_path / str(warm)}", warm_ranks=warm)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("lfbm_dist: ", "done: "))]
        runs[warm] = (
            [ln.split(", newest checkpoint")[0].rsplit(",", 1)[0] for ln in lines],
            latest(tmp_path / str(warm)),
        )
    assert runs[True][0] == runs[False][0] and len(runs[True][0]) == 2 and "2 rank(s)" in runs[True][0][0]
    a, b = read_state(runs[True][1]), read_state(runs[False][1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bad = [
        launch.run(kind, *args, f"train.run_dir={tmp_path / 'bad'}", "train.seed=x", warm_ranks=w)
        for w in (True, False)
    ]
    errors = [sorted({ln for ln in p.stderr.splitlines() if ln.startswith("error:")}) for p in bad]
    assert bad[0].returncode != 0 and bad[1].returncode != 0 and errors[0] == errors[1] and len(errors[0]) == 1
