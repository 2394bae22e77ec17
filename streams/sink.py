"""Adapter: usage records to hive-partitioned Parquet, exactly once per offset, in a local folder
or an S3-compatible bucket (lake.store).

Files are `<lake>/date=YYYY-MM-DD/<topic>-p<partition>-<first>-<last>.parquet`, named by the
source offsets they hold. Each is made durable under its final name: in a folder, a temp name
fsynced and renamed; in a bucket, one PUT of the final key (atomic per object, no rename). After
all files of a batch are in place, the partition's manifest (`_manifests/<topic>-<p>.json`) is
replaced with the next offset to read. The manifest, not the consumer group, is the truth: on
start the sink deletes temp files and any file that starts at or after its partition's manifest
offset (a batch cut short by a crash), then reads from the manifest offset. A batch is therefore
either wholly visible and recorded, or wholly redone with the same offsets, keys and content.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lake.store import LakeLocation, LakeStore
from schemas.lake import FILE_RE, MANIFESTS_DIR, data_file_name, date_folder, manifest_name
from schemas.parquet import usage_arrow_schema
from schemas.usage import USAGE_FIELD_NAMES

ROW_GROUP_ROWS = 128 * 1024


class ParquetSink:
    def __init__(self, root: LakeLocation, topic: str) -> None:
        self.lake = LakeStore(root)
        self.lake.create(MANIFESTS_DIR)
        self.topic = topic
        self.schema = usage_arrow_schema()

    def _manifest_path(self, partition: int) -> str:
        return self.lake.path(MANIFESTS_DIR, manifest_name(self.topic, partition))

    def next_offset(self, partition: int) -> int:
        """The first offset of `partition` not yet durably in Parquet."""
        data = self.lake.read_bytes(self._manifest_path(partition))
        return 0 if data is None else int(json.loads(data)["next_offset"])

    def _partition_entries(self, partition: int) -> list[tuple[int, str]]:
        """(first offset, path) of this partition's data files, oldest offsets first."""
        entries = []
        for file in self.lake.files():
            match = FILE_RE.match(file.name)
            if (
                file.folder.startswith("date=")
                and match
                and match["topic"] == self.topic
                and int(match["partition"]) == partition
            ):
                entries.append((int(match["first"]), file.path))
        return sorted(entries)

    def data_files(self) -> list[str]:
        """Every data file of the topic, by path."""
        return sorted(
            f.path
            for f in self.lake.files()
            if f.folder.startswith("date=") and (m := FILE_RE.match(f.name)) and m["topic"] == self.topic
        )

    def recover(self, partition: int) -> int:
        """Remove what a crash left half-done for `partition`; returns the offset to resume at."""
        resume = self.next_offset(partition)
        prefix = f"{self.topic}-p{partition}-"
        for file in self.lake.files():
            if file.folder.startswith("date=") and file.name.startswith(prefix) and file.name.endswith(".tmp"):
                self.lake.delete(file.path)
        for first, path in self._partition_entries(partition):
            if first >= resume:
                self.lake.delete(path)
        return resume

    def partition_files(self, partition: int) -> list[str]:
        """This partition's files, oldest offsets first."""
        return [path for _, path in self._partition_entries(partition)]

    def recent_record_ids(self, partition: int, limit: int) -> list[str]:
        """Up to `limit` record ids most recently written for `partition`, oldest first."""
        ids: list[str] = []
        for path in reversed(self.partition_files(partition)):
            table = pq.read_table(path, columns=["record_id"], filesystem=self.lake.fs)
            ids[:0] = table["record_id"].to_pylist()
            if len(ids) >= limit:
                break
        return ids[-limit:]

    def write_batch(self, partition: int, first_offset: int, last_offset: int, rows: list[dict[str, Any]]) -> list[str]:
        """Write rows read from offsets [first, last] of `partition`, then advance its manifest."""
        by_folder: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_folder[date_folder(row["window_start_ms"])].append(row)
        name = data_file_name(self.topic, partition, first_offset, last_offset)
        written = []
        for folder_name, date_rows in sorted(by_folder.items()):
            columns = {field: [row[field] for row in date_rows] for field in USAGE_FIELD_NAMES}
            table = pa.table(columns, schema=self.schema)
            path = self.lake.path(folder_name, name)
            self.lake.put(
                path,
                lambda stream, t=table: pq.write_table(t, stream, row_group_size=ROW_GROUP_ROWS, compression="zstd"),
            )
            written.append(path)
        self.lake.put_bytes(self._manifest_path(partition), json.dumps({"next_offset": last_offset + 1}).encode())
        return written
