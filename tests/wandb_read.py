"""Read a W&B offline run folder back: its .wandb file is a 7-byte header, then LevelDB-log records
(32 KiB blocks; FULL/FIRST/MIDDLE/LAST pieces) of W&B's own Record protobuf."""

import json
import struct
from pathlib import Path


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", raw[:7]
    pos, block, out, part = 7, 32768, [], b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        part += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def run_contents(run_folder: Path) -> tuple[str, dict, dict[str, list[tuple[int, float]]]]:
    """(run id, config, metric -> [(step, value)]) of one offline run folder."""
    (path,) = run_folder.glob("run-*.wandb")
    run_id, config, history = "", {}, {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for key, value in items.items():
                if not key.startswith("_") and isinstance(value, (int, float)):
                    history.setdefault(key, []).append((items["_step"], value))
    return run_id, config, history
