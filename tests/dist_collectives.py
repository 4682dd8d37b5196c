"""Launched on 2 ranks (DDP or DeepSpeed via accelerate launch): counts collective communication
during posterior inference, eager and torch.compile'd (must be none), and during the learning step
(must be some). Writes OUT_DIR/rank{R}.json per rank:
{"rank", "backend", "inference", "inference_compiled", "compile_fallback", "learning"}."""

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

COUNT = {"calls": 0}
NAMES = [
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "barrier",
    "reduce",
    "gather",
    "scatter",
    "send",
    "recv",
    "isend",
    "irecv",
    "all_to_all",
    "all_to_all_single",
    "broadcast_object_list",
    "all_gather_object",
]


def counting(fn):
    def wrapper(*args, **kwargs):
        COUNT["calls"] += 1
        return fn(*args, **kwargs)

    return wrapper


cfg = load_config("configs/test_tiny.yaml", ["train.batch_per_gpu=4", "prior.flow_steps=1"])  # a smaller graph
engine = Engine(cfg)
torch.manual_seed(0)
model = build_model(cfg)
wrapped, optimizer = engine.prepare(model, build_optimizer(cfg, model))
plain = engine.unwrap(wrapped)
uncounted_barrier = torch_dist.barrier  # orders the compiles below; not part of what is counted
for name in NAMES:  # every Python-level collective, as DeepSpeed's comm layer calls them
    if hasattr(torch_dist, name):
        setattr(torch_dist, name, counting(getattr(torch_dist, name)))
if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
    # DDP reduces gradients in C++, bypassing the Python functions: count through a comm hook.
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        COUNT["calls"] += 1
        return allreduce_hook(state, bucket)

    wrapped.register_comm_hook(None, hook)

x = torch.rand(4, 3, 16, 16) * 2 - 1
z = langevin_posterior(plain.generator, plain.prior, x, num_steps=5, step_size=0.1, sigma=0.3)
inference_calls = COUNT["calls"]
# The fast path's compiled chains must stay local too: the one compiled Langevin step (called twice
# per chain: one graph to compile) at a chain batch of 2 (two calls for the 4 chains).
whole = FastPath.resolve(PerfConfig(compile="on"), engine.device, deepspeed=engine.uses_deepspeed)
# Rank 0 compiles first; the other rank then finds the graph in the run's shared compile cache (as a
# cluster's ranks would: training/compile_cache.py) instead of both compiling it on the CI's two cores.
if engine.rank != 0:
    uncounted_barrier()
before = COUNT["calls"]
langevin_posterior(plain.generator, plain.prior, x, num_steps=2, step_size=0.1, sigma=0.3, runner=whole.runner(2))
compiled_calls = COUNT["calls"] - before
if engine.rank == 0:
    uncounted_barrier()
assert GRAPHS.graphs_compiled == 1, GRAPHS.summary()
inference_calls = COUNT["calls"]
with engine.accumulate(wrapped):
    loss, _ = wrapped(x, z)
    engine.backward(loss)
optimizer.step()
result = {
    "rank": engine.rank,
    "backend": engine.backend_name,
    "inference": inference_calls,
    "inference_compiled": compiled_calls,
    "compile_fallback": GRAPHS.fallback_reason,
    "learning": COUNT["calls"] - inference_calls,
}
with open(os.path.join(os.environ["LFBM_TEST_OUT"], f"rank{engine.rank}.json"), "w") as f:
    json.dump(result, f)
engine.end()
