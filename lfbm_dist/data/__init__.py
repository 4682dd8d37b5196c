"""Data: packaged in-memory sets, WebDataset shard streaming through a world-size-independent epoch
plan, occlusion masks. Takes plain values only (no Config): training/build.py makes feeds from one."""

from .errors import DataError, SampleError, ShardSkip
from .memory import load_memory_dataset, to_model_range

__all__ = ["DataError", "SampleError", "ShardSkip", "load_memory_dataset", "to_model_range"]
