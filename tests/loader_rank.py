"""One 'rank' of a real multi-process loader test: stream one epoch, dump keys per step as JSON.

usage: python loader_rank.py RANK WORLD WORKERS BATCH_PER_RANK EPOCH OUT.json SHARD [SHARD ...]
"""

import json
import sys

from torch.utils.data import DataLoader

from lfbm_dist.data.index import ShardInfo
from lfbm_dist.data.plan import EpochPlan, Layout
from lfbm_dist.data.reader import count_samples
from lfbm_dist.data.stream import DecodeOptions, ShardStream, StreamOptions

rank, world, workers, batch, epoch = (int(a) for a in sys.argv[1:6])
out, urls = sys.argv[6], sys.argv[7:]
shards = [ShardInfo(u, count_samples(u)) for u in urls]
layout = Layout(world, 1, workers)
plan = EpochPlan(tuple(s.samples for s in shards), batch * world, world * workers, seed=7, epoch=epoch)
options = StreamOptions(DecodeOptions(8, 3, hflip=True), shuffle_buffer=5, max_corrupt=0)
stream = ShardStream(shards, plan, rank, layout, options)
steps: dict[int, list[str]] = {}
for chunk in DataLoader(stream, batch_size=None, num_workers=workers):
    steps.setdefault(chunk.step, []).extend(chunk.keys)
json.dump({"steps": [steps[t] for t in sorted(steps)], "expected_steps": plan.steps}, open(out, "w"))
