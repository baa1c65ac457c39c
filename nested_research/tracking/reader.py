"""Read an offline W&B run (``run-<id>.wandb``) back without the network or a W&B account.

The ``.wandb`` file is W&B's transaction log: a 7-byte header (``":W&B"``,
magic ``0xBEE1``, version 0) and then LevelDB-log framed records (32 KiB
blocks; each chunk is ``crc32 (uint32) | length (uint16) | type (uint8) |
data``; type FULL, or FIRST / MIDDLE... / LAST for a record split across
blocks; a block tail shorter than a chunk header is zero padding).  Each
record is a ``wandb.proto.wandb_internal_pb2.Record`` (``wandb.proto`` has the
message types).  W&B 0.31 no longer ships a Python reader of this format
(``wandb.sdk.internal.datastore`` is gone), so this module implements the
framing itself::

    from nested_research.tracking.reader import read_run
    run = read_run("outputs/wandb/offline-run-20250101_120000-abcd1234")
    run.config["optimizer"]["name"], run.history[-1]["train/loss"], run.exit_code
    run.table("schedule/table")          # the end-of-run table as a list of dicts

or ``python -m nested_research.tracking.reader RUN_DIR`` for a short summary.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
IDENT, MAGIC = b":W&B", 0xBEE1
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_CRC = {t: zlib.crc32(bytes([t])) & 0xFFFFFFFF for t in (FULL, FIRST, MIDDLE, LAST)}


def iter_records(path: str):
    """Yield every ``Record`` of a ``.wandb`` file, in order (checksums verified)."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < HEADER.size:
        raise ValueError(f"{path}: too short for a W&B header")
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC or version != 0:
        raise ValueError(f"{path}: not a W&B transaction log ({ident!r}, {magic:#x}, {version})")
    pos, pending = HEADER.size, None
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # block trailer
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero fill (preallocated or unwritten tail)
            pos += left
            continue
        body = data[pos + CHUNK.size:pos + CHUNK.size + length]
        if len(body) < length:
            break  # a record still being written
        if kind not in _CRC or zlib.crc32(body, _CRC[kind]) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += CHUNK.size + length
        if kind == FULL:
            payload = body
        elif kind == FIRST:
            pending = body
            continue
        elif pending is None:
            raise ValueError(f"{path}: record continuation without a start at byte {pos}")
        else:
            pending += body
            if kind == MIDDLE:
                continue
            payload, pending = pending, None
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _key(item) -> tuple[str, ...]:
    return tuple(item.nested_key) if len(item.nested_key) else (item.key,)


def _set(target: dict, key: tuple[str, ...], value) -> None:
    """``key`` is W&B's nested key: ``("train/loss",)`` or ``("schedule/table", "path")``."""
    for part in key[:-1]:
        target = target.setdefault(part, {})
    target[key[-1]] = value


@dataclass
class OfflineRun:
    """What one offline run recorded."""

    path: str                                         # the run directory
    run_id: str = ""
    name: str = ""
    group: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)        # the run config (``_wandb`` removed)
    history: list = field(default_factory=list)       # one dict per ``run.log`` call
    summary: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)       # define_metric: name/glob -> step metric
    files: list = field(default_factory=list)         # paths saved under the run's files/
    artifacts: list = field(default_factory=list)     # (name, type) of logged artifacts
    exit_code: int | None = None                      # None: the run never finished

    @property
    def files_dir(self) -> str:
        return os.path.join(self.path, "files")

    def rows_with(self, key: str) -> list[dict]:
        return [row for row in self.history if key in row]

    def table(self, key: str) -> list[dict]:
        """A logged ``wandb.Table`` (its last value) as a list of row dicts."""
        rows = self.rows_with(key)
        if not rows:
            raise KeyError(f"no table {key!r} in the history")
        with open(os.path.join(self.files_dir, rows[-1][key]["path"])) as fh:
            table = json.load(fh)
        return [dict(zip(table["columns"], row)) for row in table["data"]]


def _locate(path: str) -> tuple[str, str]:
    if os.path.isdir(path):
        found = glob.glob(os.path.join(path, "*.wandb"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected one .wandb file, found {found}")
        return path, found[0]
    return os.path.dirname(path), path


def has_exit(path: str) -> bool:
    """Whether the run's log already holds its exit record (the run is finished on disk)."""
    try:
        return any(r.WhichOneof("record_type") == "exit"
                   for r in iter_records(_locate(path)[1]))
    except (OSError, ValueError):
        return False


def wait_for_exit(path: str, timeout: float = 30.0, poll: float = 0.05) -> bool:
    """Wait until the run's exit record is on disk; ``False`` after ``timeout`` seconds.

    W&B's service writes the transaction log asynchronously: ``run.finish()``
    can return before the file holds everything (seen with W&B 0.31 and
    ``reinit="create_new"``).
    """
    deadline = time.monotonic() + timeout
    size = -1
    while True:
        try:
            now = os.path.getsize(_locate(path)[1])
        except (OSError, FileNotFoundError):
            now = -1
        if now == size and now > HEADER.size and has_exit(path):
            return True
        if time.monotonic() > deadline:
            return False
        size = now
        time.sleep(poll)


def _apply_items(target: dict, record) -> None:
    """A config or summary record's ``update`` items set into ``target``, ``remove`` items popped."""
    for item in record.update:
        _set(target, _key(item), json.loads(item.value_json))
    for item in record.remove:
        target.pop(_key(item)[0], None)


def read_run(path: str, wait: float = 0.0) -> OfflineRun:
    """Parse an offline run directory (or its ``.wandb`` file) into an ``OfflineRun``.

    ``wait``: seconds to wait for the run to be finished on disk first (0: read as is).
    """
    if wait:
        wait_for_exit(path, wait)
    run_dir, log = _locate(path)
    run = OfflineRun(path=run_dir)
    for record in iter_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group = r.run_id, r.display_name, r.run_group
            run.tags = list(r.tags)
            _apply_items(run.config, r.config)
        elif kind == "config":
            _apply_items(run.config, record.config)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = _key(item)
                value = json.loads(item.value_json)
                if len(key) == 1:
                    row[key[0]] = value
                else:
                    _set(row, key, value)
            run.history.append(row)
        elif kind == "summary":
            _apply_items(run.summary, record.summary)
        elif kind == "metric":
            m = record.metric
            run.metrics[m.name or m.glob_name] = m.step_metric
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "artifact":
            run.artifacts.append((record.artifact.name, record.artifact.type))
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    run.config.pop("_wandb", None)
    return run


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m nested_research.tracking.reader RUN_DIR_OR_.wandb_FILE",
              file=sys.stderr)
        return 2
    run = read_run(argv[0])
    keys = sorted({k for row in run.history for k in row})
    print(f"run {run.run_id} ({run.name}), group {run.group!r}, tags {run.tags}, "
          f"exit code {run.exit_code}")
    print(f"{len(run.history)} history rows, {len(keys)} keys; files: {sorted(set(run.files))}")
    for key in sorted(k for k in run.summary if not k.startswith("_")):
        value = run.summary[key]
        if isinstance(value, (int, float, str, bool)):
            print(f"  {key} = {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
