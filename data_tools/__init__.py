"""Offline tools that build and verify WebDataset shards for lfbm_dist."""
