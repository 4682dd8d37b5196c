"""Two nodes on one machine: two network namespaces joined by a veth pair, each with its own address,
one `accelerate launch --num_machines 2 --machine_rank R --main_process_ip <node 0>` per namespace, as
README tells a user to launch on a cluster. A run started on one node resumes on both, and their
distributed FID equals the single-process one. Needs root (namespaces); skipped with the reason
otherwise. Only traffic between the two namespaces this test creates, deleted at the end."""

import json
import os
import re
import subprocess
import time
import uuid

import pytest
import torch
from conftest import PYTHON, ROOT, stopped_at
from launch import ACCELERATE, env, finished_run, free_port, module, run

from lfbm_dist import state_schema as schema
from lfbm_dist.export import checkpoint_state_dict
from lfbm_dist.training.checkpoint import latest

pytestmark = pytest.mark.slow
TINY = ["--config", "configs/test_tiny.yaml"]
ADDRESSES = ("10.199.77.1", "10.199.77.2")


def _ip(*args, ns=None):
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def nodes():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    names, links = [f"lfbm{tag}n0", f"lfbm{tag}n1"], [f"lv{tag}0", f"lv{tag}1"]
    if _ip("netns", "add", names[0]).returncode:
        pytest.skip("cannot create network namespaces here (ip netns add failed)")
    try:
        _ip("netns", "add", names[1])
        assert _ip("link", "add", links[0], "type", "veth", "peer", "name", links[1]).returncode == 0
        for ns, link, addr in zip(names, links, ADDRESSES):
            _ip("link", "set", link, "netns", ns)
            _ip("addr", "add", f"{addr}/24", "dev", link, ns=ns)
            _ip("link", "set", link, "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
        assert _ip("addr", ns=names[1]).stdout.count(ADDRESSES[1]) == 1
        yield list(zip(names, links))
    finally:
        for ns in names:
            _ip("netns", "delete", ns)


def _two_nodes(nodes, script: str, *args: str, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """The README's multi-node command, once per node (namespace), both at once."""
    port = str(free_port())
    procs = []
    for rank, (ns, link) in enumerate(nodes):
        cmd = [
            "ip",
            "netns",
            "exec",
            ns,
            ACCELERATE,
            "launch",
            "--multi_gpu",
            "--num_machines",
            "2",
            "--num_processes",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            ADDRESSES[0],
            "--main_process_port",
            port,
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            script,
            *args,
        ]
        e = env(GLOO_SOCKET_IFNAME=link)  # the node's own network, as on a cluster
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    for p in out:
        assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-4000:])
    return out


def test_one_node_run_resumes_on_two_nodes_and_their_fid_equals_one_process(tmp_path, nodes):
    args = [*TINY, "train.log_every_kimg=0.08", "langevin.num_steps=2", "train.batch_per_gpu=8"]
    straight, grown = tmp_path / "straight", tmp_path / "grown"
    finished_run(straight, *args, "train.total_kimg=0.08", "train.snapshot_every_kimg=0.04")
    stopped_at(straight, 40, grown)  # the run as one node left it when it stopped after step 5's snapshot
    out = _two_nodes(
        nodes, "lfbm_dist/train.py", *args, "train.total_kimg=0.08", f"train.run_dir={grown}", "train.resume=auto"
    )
    assert "2 rank(s)" in out[0].stdout and "resumed from ckpt-000000000040" in out[0].stdout
    assert schema.images_seen(grown) == 80
    a, b = checkpoint_state_dict(latest(straight)), checkpoint_state_dict(latest(grown))
    for key, ref in a.items():
        assert ((b[key] - ref).norm() / ref.norm().clamp_min(1e-12)) <= 1e-5, key
    fid_args = [
        "--run",
        str(grown),
        "--metrics",
        "fid",
        "eval.fid_num_samples=16",  # two batches per node: the sharding and the gather are what is tested
        "eval.fid_ref_samples=12",
        "eval.fid_batch=4",
        f"eval.cache_dir={tmp_path / 'cache'}",
    ]
    _two_nodes(nodes, "lfbm_dist/evaluate.py", *fid_args, "--out", str(tmp_path / "two.json"))
    single = module("lfbm_dist.evaluate", *fid_args, "--out", str(tmp_path / "one.json"))
    assert single.returncode == 0, single.stderr[-2000:]
    two, one = (json.loads((tmp_path / f).read_text())["fid"] for f in ("two.json", "one.json"))
    assert abs(two - one) <= 1e-6 * max(1.0, abs(one)), (two, one)
    assert torch.isfinite(torch.tensor(one))


def _elastic_node(nodes, rank: int, port: str, run_dir, *args: str) -> subprocess.Popen:
    """One node of an elastic job: torchrun with a c10d rendezvous hosted by node 0, 1 to 2 nodes."""
    ns, link = nodes[rank]
    cmd = ["ip", "netns", "exec", ns, PYTHON, "-m", "torch.distributed.run", "--nnodes", "1:2"]
    cmd += ["--nproc_per_node", "1", "--max-restarts", "3", "--monitor-interval", "0.5"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{ADDRESSES[0]}:{port}", "--rdzv-id", "elastic-test"]
    # is_host: inside a namespace the host name resolves to no local address, so say which node hosts
    conf = f"is_host={'true' if rank == 0 else 'false'},join_timeout=60,last_call_timeout=2"
    cmd += ["--rdzv-conf", conf + ",keep_alive_interval=1,keep_alive_max_attempt=3", "--local-addr", ADDRESSES[rank]]
    cmd += ["lfbm_dist/train.py", *TINY, f"train.run_dir={run_dir}", *args]
    e = env(
        GLOO_SOCKET_IFNAME=link,
        LFBM_FAULT_STEP_SLEEP="0.5",
        LFBM_TEST_KEYS_DIR=str(run_dir.parent / "keys"),
        TORCH_LOGS="-distributed",
        TORCH_CPP_LOG_LEVEL="ERROR",
    )  # README's quiet agent settings
    return subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final_keys(keys_dir) -> list[str]:
    """The keys each step finally trained on: a restart re-does steps; the newest attempt's records count."""
    rows = [json.loads(line) for f in sorted(keys_dir.glob("keys_rank*.jsonl")) for line in f.read_text().splitlines()]
    newest: dict[int, int] = {}
    for r in rows:
        newest[r["step"]] = max(newest.get(r["step"], -1), r["attempt"])
    return [k for r in rows if r["attempt"] == newest[r["step"]] for k in r["keys"]]


TORCH_LOG_RECORD = re.compile(r"[EWI]\d{4} \d\d:\d\d:\d\d")  # torch elastic's own log records (glog format)


def _lose_a_node(nodes, run_dir, args: list[str], after: str, lost: int, timeout: int):
    """Both nodes of an elastic job (_elastic_node); once checkpoint `after` exists, SIGKILL node `lost`'s
    agent and worker at once (the node is gone). Returns the other node's process, its stdout and stderr,
    the seconds it took to exit after the kill, and the rendezvous port."""
    import psutil

    (run_dir.parent / "keys").mkdir(parents=True)
    port = str(free_port())
    procs = [_elastic_node(nodes, r, port, run_dir, *args) for r in (0, 1)]
    try:
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / after).is_dir() and time.time() < deadline:
            time.sleep(0.2)
        node = psutil.Process(procs[lost].pid)
        for p in [node, *node.children(recursive=True)]:
            p.kill()
        killed = time.time()
        out, err = procs[1 - lost].communicate(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
    return procs[1 - lost], out, err, time.time() - killed, port


def test_a_lost_node_leaves_the_job_to_finish_on_the_other_exactly(tmp_path, nodes):
    """Two nodes under torch elastic's agent (c10d rendezvous, --nnodes 1:2, --max-restarts): SIGKILL of
    node 1's agent and worker mid-run; node 0's agent re-forms the job at 1 rank, which resumes from
    the newest checkpoint with no flag (global batch 16 kept: 8 × accumulation 2) and finishes. Final
    weights equal an uninterrupted run within 1e-5, and every sample of the epoch is trained on once."""
    args = ["train.total_kimg=0.256", "train.snapshot_every_kimg=0.032", "train.batch_per_gpu=8"]
    straight = tmp_path / "straight"
    assert run("single", *TINY, *args, "train.batch_per_gpu=16", f"train.run_dir={straight}").returncode == 0
    run_dir = tmp_path / "elastic" / "run"
    survivor, out, err, _, _ = _lose_a_node(nodes, run_dir, args, "ckpt-000000000064", lost=1, timeout=180)
    assert survivor.returncode == 0, (out[-2000:], err[-3000:])
    assert "2 rank(s)" in out and "1 rank(s) on" in out and "8 × 2 accumulation × 1 rank(s)" in out, out[-3000:]
    assert "resumed from ckpt-" in out
    # What node 0's worker knew before its agent restarted it: which rank left, killed without a word.
    (said,) = [ln for ln in err.splitlines() if "left the job" in ln]
    assert said.startswith("[rank 0] error: rank 1 left the job while rank 0 waited") and "without a word" in said
    a, b = checkpoint_state_dict(latest(straight)), checkpoint_state_dict(latest(run_dir))
    assert latest(run_dir).name == latest(straight).name == "ckpt-000000000256"
    for key, ref in a.items():
        assert ((b[key] - ref).norm() / ref.norm().clamp_min(1e-12)) <= 1e-5, key
    keys = _final_keys(tmp_path / "elastic" / "keys")
    assert len(keys) == 256 and len(set(keys)) == 256  # the epoch's 256 samples, each once


def test_losing_the_node_that_hosts_the_rendezvous_is_one_line_naming_it_and_the_restart(tmp_path, nodes):
    """The limit of torch elastic's c10d rendezvous: it lives on one node (node 0 here, is_host). When that
    node is lost the others cannot re-form the job; node 1 says so as its first error line, with how to
    start again from the newest checkpoint, and exits (not a hang, not only the agent's stack dumps)."""
    args = ["train.total_kimg=0.256", "train.snapshot_every_kimg=0.032", "train.batch_per_gpu=8"]
    run_dir = tmp_path / "elastic" / "run"
    survivor, _, err, seconds, port = _lose_a_node(nodes, run_dir, args, "ckpt-000000000032", lost=0, timeout=120)
    assert survivor.returncode != 0 and seconds < 60
    errors = [ln for ln in err.splitlines() if re.match(r"(\[rank \d\] )?error: ", ln)]
    assert errors, err[-3000:]
    first = errors[0]  # the cause, before the agent's own traceback of RendezvousConnectionError
    # Short exits: after its first error line the worker writes nothing more to the console (its C++
    # stack dumps and tracebacks go to its log file); what follows is torch elastic's agent, quieted by
    # README's settings (TORCH_LOGS=-distributed, TORCH_CPP_LOG_LEVEL=ERROR) down to the traceback of its
    # own uncaught RendezvousConnectionError, which no setting of torch's suppresses.
    # The agent's traceback has two lengths, by which of its loops meets the lost store first: its monitor
    # (≈ 45 lines) or, when our worker exits first, its restart of the workers (≈ 18 lines more, after its
    # own "failed (exitcode …)" log record). So the test checks what each line is, not how many there are.
    lines = err.splitlines()
    after = lines[lines.index(first) + 1 :]
    agent = after.index("Traceback (most recent call last):") if "Traceback (most recent call last):" in after else 0
    worker_lines = [ln for ln in after[:agent] if not TORCH_LOG_RECORD.match(ln)]
    assert not worker_lines, worker_lines  # the worker's own lines after its first error line: none
    assert agent <= 10 and "RendezvousConnectionError" in after[-1], after[:12]
    ours = [ln for ln in lines[: lines.index(first) + 1 + agent] if not TORCH_LOG_RECORD.match(ln)]
    assert len(ours) <= 2, ours  # the whole console but the agent's: our line, perhaps the stop note
    assert f"the node hosting the job's rendezvous ({ADDRESSES[0]}:{port}) is gone" in first, first
    assert "--rdzv-endpoint" in first and "train.resume=auto" in first, first
