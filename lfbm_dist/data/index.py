"""Shard lists: brace patterns, index files written by data_tools (with per-shard sample counts and
per-sample checksums), or plain URLs, at any URL that urls.open_url reads."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

from .errors import DataError
from .urls import DEFAULT_IO, IOOptions, check_url, read_text


@dataclass(frozen=True)
class ShardInfo:
    url: str
    samples: int | None = None  # from the index; None = count by reading
    checksums: dict[str, str] | None = field(default=None, compare=False, repr=False)  # key -> sample digest


def _expand_index(spec: str, opts: IOOptions) -> list[ShardInfo]:
    url, _, split = spec.partition("#")
    split = split or "train"
    try:
        index = json.loads(read_text(url, opts))
        shards = index["splits"][split]["shards"]
    except KeyError:
        raise DataError(f"{url}: index has no split {split!r}") from None
    except (ValueError, TypeError):
        raise DataError(f"{url}: not a valid shard index (JSON with splits/…/shards)") from None
    base = posixpath.dirname(url)
    out = []
    for s in shards:
        shard_url = s["url"] if "://" in s["url"] or s["url"].startswith("/") else posixpath.join(base, s["url"])
        out.append(ShardInfo(shard_url, int(s["samples"]), s.get("checksums")))
    return out


def expand_shard_specs(specs: list[str], opts: IOOptions = DEFAULT_IO) -> list[ShardInfo]:
    """Brace patterns, index files and plain URLs -> an ordered shard list."""
    from braceexpand import braceexpand

    shards: list[ShardInfo] = []
    for spec in specs:
        check_url(spec, opts.allow_pipe)
        if spec.split("#")[0].endswith(".json"):
            shards += _expand_index(spec, opts)
        else:
            shards += [ShardInfo(u) for u in braceexpand(spec)]
    if not shards:
        raise DataError("data.shards: the shard list is empty")
    return shards


def split_specs(specs: list[str], split: str) -> list[str]:
    """The same shard specs, pointing index files at another split (`index.json#test`)."""
    out = []
    for spec in specs:
        base = spec.split("#")[0]
        out.append(f"{base}#{split}" if base.endswith(".json") else spec)
    return out
