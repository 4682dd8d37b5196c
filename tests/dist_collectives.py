"""Launched on 2 ranks (DDP or DeepSpeed via accelerate launch): counts collective communication
during posterior inference, eager and torch.compile'd (must be none), and during the learning step
(must be some). Writes OUT_DIR/rank{R}.json per rank:
{"rank", "backend", "inference", "inference_compiled", "compile_fallback", "learning"}.

Counted by torch's own profiler, not by wrapping anything: every collective of a process group —
from Python, from DeepSpeed's comm layer or from DDP's C++ reducer — is recorded as a `c10d::` op
(and its backend's `gloo:` / `nccl:` event)."""

import json
import os
import sys

import torch
import torch.distributed as torch_dist

sys.path.insert(0, ".")
from lfbm_dist.config import PerfConfig, load_config  # noqa: E402
from lfbm_dist.inference import GRAPHS, langevin_posterior  # noqa: E402
from lfbm_dist.training.build import build_model, build_optimizer  # noqa: E402
from lfbm_dist.training.engine import Engine  # noqa: E402
from lfbm_dist.training.fastpath import FastPath  # noqa: E402


def collectives(work) -> int:
    """How many collectives `work()` ran on this rank (c10d ops in torch's profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        work()
    return sum(1 for e in prof.events() if e.name.startswith("c10d::"))


cfg = load_config("configs/test_tiny.yaml", ["train.batch_per_gpu=4", "prior.flow_steps=1"])  # a smaller graph
engine = Engine(cfg)
torch.manual_seed(0)
model = build_model(cfg)
wrapped, optimizer = engine.prepare(model, build_optimizer(cfg, model))
plain = engine.unwrap(wrapped)
x = torch.rand(4, 3, 16, 16) * 2 - 1
z = None


def infer():
    global z
    z = langevin_posterior(plain.generator, plain.prior, x, num_steps=5, step_size=0.1, sigma=0.3)


inference_calls = collectives(infer)
# The fast path's compiled chains must stay local too: the one compiled Langevin step (called twice
# per chain: one graph to compile) at a chain batch of 2 (two calls for the 4 chains).
whole = FastPath.resolve(PerfConfig(compile="on"), engine.device, deepspeed=engine.uses_deepspeed)
# Rank 0 compiles first; the other rank then finds the graph in the run's shared compile cache (as a
# cluster's ranks would: training/compile_cache.py) instead of both compiling it on the CI's two cores.
if engine.rank != 0:
    torch_dist.barrier()
compiled_calls = collectives(
    lambda: langevin_posterior(plain.generator, plain.prior, x, num_steps=2, step_size=0.1, sigma=0.3,
                               runner=whole.runner(2))
)  # fmt: skip
if engine.rank == 0:
    torch_dist.barrier()
assert GRAPHS.graphs_compiled == 1, GRAPHS.summary()


def learn():
    with engine.accumulate(wrapped):
        loss, _ = wrapped(x, z)
        engine.backward(loss)
    optimizer.step()


learning_calls = collectives(learn)
result = {
    "rank": engine.rank,
    "backend": engine.backend_name,
    "inference": inference_calls,
    "inference_compiled": compiled_calls,
    "compile_fallback": GRAPHS.fallback_reason,
    "learning": learning_calls,
}
with open(os.path.join(os.environ["LFBM_TEST_OUT"], f"rank{engine.rank}.json"), "w") as f:
    json.dump(result, f)
engine.end()
