"""Data: packaged in-memory sets, WebDataset shard streaming, occlusion masks."""
from .memory import load_memory_dataset, to_model_range

__all__ = ["load_memory_dataset", "to_model_range"]
