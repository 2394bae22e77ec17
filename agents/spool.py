"""A durable local spool between sampling and Kafka (SQLite in WAL mode, stdlib only).

Every sample is committed to disk before anything tries to send it, and is deleted
only after Kafka acknowledged it (acks=all). Rows keep their insertion order, so a
drain after an outage sends them in the order they were taken. If the agent is
killed, unacknowledged rows are still there on restart and are sent again (the
streams dedupe on node, boot and seq). Size and age are bounded: when a bound is
hit the oldest rows are dropped, with a log line and a counter, never silently.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from schemas.units import MS_PER_DAY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpoolRow:
    row_id: int
    key: bytes
    value: bytes


class Spool:
    def __init__(
        self,
        path: Path,
        max_bytes: int = 512 * 1024**2,
        max_age_ms: int = 7 * MS_PER_DAY,
        synchronous: str = "FULL",
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")  # FULL: fsync at every commit
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "ts_ms INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL)"
        )
        size, rows = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0), COUNT(*) FROM spool"
        ).fetchone()
        self._bytes: int = size
        self._rows: int = rows
        self.has_rows = threading.Event()
        if self._rows:
            self.has_rows.set()

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def pending_rows(self) -> int:
        return self._rows

    def append(self, key: bytes, value: bytes, ts_ms: int) -> None:
        """Commit one message to disk (durable when this returns), then enforce the bounds."""
        self.append_many([(key, value, ts_ms)])

    def append_many(self, items: list[tuple[bytes, bytes, int]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO spool (key, value, ts_ms) VALUES (?, ?, ?)", items)
            self._db.execute("COMMIT")
            self._bytes += sum(len(k) + len(v) for k, v, _ in items)
            self._rows += len(items)
            self._enforce_bounds(max(ts for _, _, ts in items))
        self.has_rows.set()

    def _enforce_bounds(self, now_ms: int) -> None:
        oldest = self._db.execute("SELECT ts_ms FROM spool ORDER BY id LIMIT 1").fetchone()  # rowid order: O(1)
        if oldest is not None and oldest[0] < now_ms - self.max_age_ms:
            too_old = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0), MAX(id) FROM spool WHERE ts_ms < ?",
                (now_ms - self.max_age_ms,),
            ).fetchone()
            self._drop_through(too_old[2], too_old[0], too_old[1], f"older than {self.max_age_ms} ms")
        if self._bytes > self.max_bytes:
            # drop the oldest rows until under 90 % of the bound, so this does not run every tick
            excess = self._bytes - self.max_bytes * 9 // 10
            cut = self._db.execute(
                "SELECT id, total FROM (SELECT id, SUM(LENGTH(key) + LENGTH(value)) OVER (ORDER BY id) AS total "
                "FROM spool) WHERE total >= ? ORDER BY id LIMIT 1",
                (excess,),
            ).fetchone()
            if cut:
                rows = self._db.execute("SELECT COUNT(*) FROM spool WHERE id <= ?", (cut[0],)).fetchone()[0]
                self._drop_through(cut[0], rows, cut[1], f"spool over {self.max_bytes} bytes")

    def _drop_through(self, last_id: int, rows: int, size: int, why: str) -> None:
        self._db.execute("DELETE FROM spool WHERE id <= ?", (last_id,))
        self._rows -= rows
        self._bytes -= size
        self.dropped += rows
        log.error(
            "spool: DROPPED %d unsent samples (%d bytes): %s; Kafka has been unreachable too long", rows, size, why
        )

    def peek(self, limit: int) -> list[SpoolRow]:
        """The oldest `limit` rows, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, key, value FROM spool ORDER BY id LIMIT ?", (limit,)).fetchall()
            if not rows:
                self.has_rows.clear()
        return [SpoolRow(*row) for row in rows]

    def ack(self, through_id: int) -> None:
        """Forget every row up to and including `through_id`: Kafka has them."""
        with self._lock:
            size, rows = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0), COUNT(*) FROM spool WHERE id <= ?", (through_id,)
            ).fetchone()
            self._db.execute("DELETE FROM spool WHERE id <= ?", (through_id,))
            self._bytes -= size
            self._rows -= rows

    def close(self) -> None:
        with self._lock:
            self._db.close()
