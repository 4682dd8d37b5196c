"""Two nodes on one machine: two network namespaces joined by a veth pair, each with its own address,
one `accelerate launch --num_machines 2 --machine_rank R --main_process_ip <node 0>` per namespace, as
README tells a user to launch on a cluster. A run started on one node resumes on both, and their
distributed FID equals the single-process one. Needs root (namespaces); skipped with the reason
otherwise. Only traffic between the two namespaces this test creates, deleted at the end."""

import json
import os
import subprocess
import uuid

import pytest
import torch
from conftest import PYTHON, ROOT
from launch import ACCELERATE, env, free_port, run

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
    assert run("single", *args, "train.total_kimg=0.08", f"train.run_dir={straight}").returncode == 0
    assert run("single", *args, "train.total_kimg=0.04", f"train.run_dir={grown}").returncode == 0
    out = _two_nodes(
        nodes, "lfbm_dist/train.py", *args, "train.total_kimg=0.08", f"train.run_dir={grown}", "train.resume=auto"
    )
    assert "2 rank(s)" in out[0].stdout and "resumed from ckpt-000000000040" in out[0].stdout
    assert json.loads((grown / "trainer_state.json").read_text())["images_seen"] == 80
    a, b = checkpoint_state_dict(latest(straight)), checkpoint_state_dict(latest(grown))
    for key, ref in a.items():
        assert ((b[key] - ref).norm() / ref.norm().clamp_min(1e-12)) <= 1e-5, key
    fid_args = [
        "--run",
        str(grown),
        "--metrics",
        "fid",
        "eval.fid_num_samples=48",
        "eval.fid_ref_samples=40",
        "eval.fid_batch=16",
        f"eval.cache_dir={tmp_path / 'cache'}",
    ]
    _two_nodes(nodes, "lfbm_dist/evaluate.py", *fid_args, "--out", str(tmp_path / "two.json"))
    single = subprocess.run(
        [PYTHON, "-m", "lfbm_dist.evaluate", *fid_args, "--out", str(tmp_path / "one.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env(),
    )
    assert single.returncode == 0, single.stderr[-2000:]
    two, one = (json.loads((tmp_path / f).read_text())["fid"] for f in ("two.json", "one.json"))
    assert abs(two - one) <= 1e-6 * max(1.0, abs(one)), (two, one)
    assert torch.isfinite(torch.tensor(one))
