"""One 'rank' of a real multi-process loader test: stream one epoch, dump keys per batch as JSON.

usage: python loader_rank.py RANK WORLD WORKERS BATCH EPOCH OUT.json SHARD [SHARD ...]
"""
import json
import sys

from torch.utils.data import DataLoader

from lfbm_dist.data.shards import ShardInfo, ShardStream, count_samples

rank, world, workers, batch, epoch = (int(a) for a in sys.argv[1:6])
out, urls = sys.argv[6], sys.argv[7:]
shards = [ShardInfo(u, count_samples(u)) for u in urls]
stream = ShardStream(shards, rank=rank, world_size=world, num_workers=workers, batch=batch, epoch=epoch, seed=7,
                     resolution=8, channels=3, hflip=True, shuffle_buffer=5, on_mismatch="convert", max_corrupt=0,
                     occlusion="none", mask_seed=0, allow_pipe=False)
batches = [b["keys"] for b in DataLoader(stream, batch_size=None, num_workers=workers)]
json.dump({"batches": batches, "expected": stream.batches_per_rank}, open(out, "w"))
