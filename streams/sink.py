"""Adapter: usage records to hive-partitioned Parquet, exactly once per offset.

Files are `usage/date=YYYY-MM-DD/<topic>-p<partition>-<first>-<last>.parquet`, named by
the source offsets they hold, written to a temp name, fsynced and renamed. After all
files of a batch are in place, the partition's manifest (`_manifests/<topic>-<p>.json`)
is replaced atomically with the next offset to read. The manifest, not the consumer
group, is the truth: on start the sink deletes temp files and any file that starts
at or after its partition's manifest offset (a batch cut short by a crash), then
reads from the manifest offset. A batch is therefore either wholly visible and
recorded, or wholly redone with the same offsets and file names.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.lake import DATA_GLOB, FILE_RE, MANIFESTS_DIR, data_file_name, date_folder, manifest_name
from schemas.parquet import usage_arrow_schema
from schemas.usage import USAGE_FIELD_NAMES

ROW_GROUP_ROWS = 128 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class ParquetSink:
    def __init__(self, root: Path, topic: str) -> None:
        self.root = Path(root)
        self.topic = topic
        self.manifests = self.root / MANIFESTS_DIR
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.schema = usage_arrow_schema()

    def _manifest_path(self, partition: int) -> Path:
        return self.manifests / manifest_name(self.topic, partition)

    def next_offset(self, partition: int) -> int:
        """The first offset of `partition` not yet durably in Parquet."""
        path = self._manifest_path(partition)
        if not path.exists():
            return 0
        return int(json.loads(path.read_text())["next_offset"])

    def data_files(self) -> list[Path]:
        return sorted(self.root.glob(DATA_GLOB))

    def recover(self, partition: int) -> int:
        """Remove what a crash left half-done for `partition`; returns the offset to resume at."""
        resume = self.next_offset(partition)
        for tmp in self.root.glob(f"date=*/{self.topic}-p{partition}-*.tmp"):
            tmp.unlink(missing_ok=True)
        for path in self.data_files():
            match = FILE_RE.match(path.name)
            if (
                match
                and match["topic"] == self.topic
                and int(match["partition"]) == partition
                and int(match["first"]) >= resume
            ):
                path.unlink()
        return resume

    def partition_files(self, partition: int) -> list[Path]:
        """This partition's files, oldest offsets first."""
        files = []
        for path in self.data_files():
            match = FILE_RE.match(path.name)
            if match and match["topic"] == self.topic and int(match["partition"]) == partition:
                files.append((int(match["first"]), path))
        return [path for _, path in sorted(files)]

    def recent_record_ids(self, partition: int, limit: int) -> list[str]:
        """Up to `limit` record ids most recently written for `partition`, oldest first."""
        ids: list[str] = []
        for path in reversed(self.partition_files(partition)):
            ids[:0] = pq.read_table(path, columns=["record_id"])["record_id"].to_pylist()
            if len(ids) >= limit:
                break
        return ids[-limit:]

    def write_batch(
        self, partition: int, first_offset: int, last_offset: int, rows: list[dict[str, Any]]
    ) -> list[Path]:
        """Write rows read from offsets [first, last] of `partition`, then advance its manifest."""
        by_folder: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_folder[date_folder(row["window_start_ms"])].append(row)
        name = data_file_name(self.topic, partition, first_offset, last_offset)
        staged: list[tuple[Path, Path]] = []
        for folder_name, date_rows in sorted(by_folder.items()):
            folder = self.root / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / name
            tmp = folder / (name + ".tmp")
            columns = {field: [row[field] for row in date_rows] for field in USAGE_FIELD_NAMES}
            table = pa.table(columns, schema=self.schema)
            pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, compression="zstd")
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            staged.append((tmp, final))
        for tmp, final in staged:
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        _write_durably(self._manifest_path(partition), json.dumps({"next_offset": last_offset + 1}).encode())
        return [final for _, final in staged]
