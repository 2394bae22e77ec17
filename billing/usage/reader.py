"""Adapter: the usage Parquet -> the quantities rating needs, grouped in DuckDB.

Which files count is decided by offsets, not by clocks. The sink names every file by the
`usage.records` partition and offset range it holds and records in a per-partition
manifest the next offset to read, after the files are durable. So a *cut-off* (partition ->
next offset, from the manifests) says exactly which records an invoice saw: those in files
whose first offset lies below it. An invoice records its cut-off; usage for its period that
lands later lies in files above it and is found by a query (`late usage`).

A record counts once: when one record id appears in several files (two sink generations),
the copy in the earliest file (partition, first offset) is the one that counts, and it
counts in whichever offset range holds that file.

The rows come out grouped by (tenant, plan, model, pricing segment) and by (tenant,
lease, plan, model), in one scan with GROUPING SETS, so their number grows with tenants ×
segments and with leases, never with GPUs × minutes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from billing.pricing.rating import LeaseQuantity, UsageQuantity
from billing.usage.errors import UsageDataError
from schemas.usage import KIND_ADJUSTMENT, KIND_USAGE
from streams.sink import FILE_RE

USAGE_TOPIC = "usage.records"
Cutoff = dict[int, int]  # usage.records partition -> first offset NOT included


@dataclass(frozen=True)
class UsageFile:
    path: str
    partition: int
    first: int
    last: int


@dataclass(frozen=True)
class OffsetRange:
    """Files whose first offset is in [start[p], end[p]) for their partition p (missing start: 0)."""

    start: Cutoff
    end: Cutoff

    def holds(self, file: UsageFile) -> bool:
        return self.start.get(file.partition, 0) <= file.first < self.end.get(file.partition, 0)

    def to_json(self) -> dict[str, Any]:
        return {"from": {str(p): o for p, o in self.start.items()}, "to": {str(p): o for p, o in self.end.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OffsetRange:
        return cls({int(p): int(o) for p, o in data["from"].items()}, {int(p): int(o) for p, o in data["to"].items()})


@dataclass(frozen=True)
class UsageRequest:
    """One tenant's usage in [start_ms, end_ms) from the files in `ranges`, split at `segment_starts`."""

    key: str  # the caller's name for it (e.g. "acme/2026-11")
    tenant_id: str
    start_ms: int
    end_ms: int
    segment_starts: tuple[int, ...]  # ascending, the first == start_ms
    ranges: tuple[OffsetRange, ...]


@dataclass
class UsageResult:
    usage: list[UsageQuantity] = field(default_factory=list)
    leases: list[LeaseQuantity] = field(default_factory=list)
    records: int = 0


def read_cutoff(root: Path, topic: str = USAGE_TOPIC) -> Cutoff:
    """The sink's manifests: per partition, the next offset it will write (everything below is durable)."""
    manifests = Path(root) / "_manifests"
    cutoff: Cutoff = {}
    if not manifests.is_dir():
        return cutoff
    for path in sorted(manifests.glob(f"{topic}-*.json")):
        partition = int(path.stem.rsplit("-", 1)[1])
        try:
            cutoff[partition] = int(json.loads(path.read_text())["next_offset"])
        except (ValueError, KeyError) as exc:
            raise UsageDataError(f"{path}: unreadable sink manifest ({exc})") from None
    return cutoff


def list_files(root: Path, topic: str = USAGE_TOPIC) -> list[UsageFile]:
    """Every data file of `topic`, in (partition, first offset) order."""
    root = Path(root)
    if not root.is_dir():
        raise UsageDataError(f"no usage data at {root}: run the streams sink first (wattmeter-streams sink)")
    files = []
    for path in root.glob("date=*/*.parquet"):
        match = FILE_RE.match(path.name)
        if match and match["topic"] == topic:
            files.append(UsageFile(str(path), int(match["partition"]), int(match["first"]), int(match["last"])))
    return sorted(files, key=lambda f: (f.partition, f.first, f.path))


def _connect() -> Any:
    import duckdb

    return duckdb.connect(config={"threads": 2})


def _sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def aggregate(root: Path, requests: Sequence[UsageRequest]) -> dict[str, UsageResult]:
    """The quantities of each request, keyed by `request.key`; requests that share the same
    offset ranges are answered by one scan."""
    results = {request.key: UsageResult() for request in requests}
    if not requests:
        return results
    files = list_files(root)
    groups: dict[tuple[str, int], list[UsageRequest]] = {}
    seen: dict[tuple[str, str], int] = {}
    for request in requests:  # one scan per offset ranges, each tenant at most once in it
        ranges = json.dumps([r.to_json() for r in request.ranges], sort_keys=True)
        round_ = seen[(ranges, request.tenant_id)] = seen.get((ranges, request.tenant_id), -1) + 1
        groups.setdefault((ranges, round_), []).append(request)
    for group in groups.values():
        _aggregate_group(files, group[0].ranges, group, results)
    return results


def _aggregate_group(
    files: list[UsageFile], ranges: tuple[OffsetRange, ...], group: list[UsageRequest], results: dict[str, UsageResult]
) -> None:
    if len({r.tenant_id for r in group}) != len(group):
        raise ValueError("one scan answers at most one request per tenant")
    # a record counts in the range holding its earliest copy: scan every file up to the
    # ranges' end so that copies in earlier files are seen, then keep the selected ones
    scanned, selected = _files_in(files, ranges)
    if not any(selected):
        return
    tenants = [(r.tenant_id, r.start_ms, r.end_ms, _grain(r)) for r in group]
    segments = [(r.tenant_id, start) for r in group for start in r.segment_starts]
    with _Scan(scanned, selected, tenants, segments) as scan:
        # 1) group the counted rows by a time bucket that no segment boundary cuts (per tenant,
        #    the gcd of its boundaries: an hour for most calendars), streaming, no join per row;
        # 2) place the few bucket rows into pricing segments with an ASOF join.
        rows = scan.fetch(
            f"""
            WITH grouped AS (
                SELECT tenant_id, plan, model, lease_id, GROUPING(lease_id) AS lease_aggregated,
                       bucket, sum(allocated_gpu_ms) AS allocated, sum(busy_gpu_ms) AS busy,
                       sum(energy_mj) AS energy, count(*) AS records, max(window_start_ms) AS last_window
                FROM (SELECT c.*, c.window_start_ms - c.window_start_ms % c.grain AS bucket
                      FROM {scan.counted_rows()} c)
                GROUP BY GROUPING SETS ((tenant_id, plan, model, bucket), (tenant_id, lease_id, plan, model))
            )
            SELECT g.tenant_id, g.plan, g.model, g.lease_id, g.lease_aggregated, s.seg_start,
                   sum(g.allocated)::BIGINT, sum(g.busy)::BIGINT, sum(g.energy)::BIGINT, sum(g.records)::BIGINT
            FROM grouped g
            ASOF JOIN segs s ON g.tenant_id = s.tenant_id
                AND (CASE WHEN g.lease_aggregated = 1 THEN g.bucket ELSE g.last_window END) >= s.seg_start
            GROUP BY ALL
            """
        )
    by_tenant = {r.tenant_id: results[r.key] for r in group}
    for tenant, plan, model, lease_id, lease_aggregated, seg_start, allocated, busy, energy, count in rows:
        result = by_tenant[tenant]
        if lease_aggregated:  # the (tenant, plan, model, segment) set
            result.usage.append(UsageQuantity(tenant, plan, model, seg_start, allocated, busy, energy, count))
            result.records += count
        else:
            result.leases.append(LeaseQuantity(lease_id, plan, model, allocated, seg_start))


def _grain(request: UsageRequest) -> int:
    """The largest bucket (ms) that divides every boundary of the request: whole minutes at least."""
    grain = 0
    for instant in (request.start_ms, request.end_ms, *request.segment_starts):
        grain = math.gcd(grain, instant)
    return math.gcd(grain, 24 * 3_600_000) or 60_000


class _Scan:
    """One DuckDB connection over the scanned files, with the tables the queries join:
    `files` (rank, selected), `tenants` (id, window range, bucket grain), `segs` (segment starts)
    and `shared` (hashes of record ids seen more than once: the only rows compared by id)."""

    def __init__(
        self,
        scanned: Sequence[UsageFile],
        selected: Sequence[bool],
        tenants: Sequence[tuple[str, int, int, int]],
        segments: Sequence[tuple[str, int]],
    ) -> None:
        self.all_selected = all(selected)
        self.lo = min(t[1] for t in tenants)
        self.hi = max(t[2] for t in tenants)
        self.con = _connect()
        try:
            self.con.execute("CREATE TEMP TABLE files(filename VARCHAR, file_rank BIGINT, selected BOOLEAN)")
            self.con.executemany(
                "INSERT INTO files VALUES (?, ?, ?)",
                [(f.path, i, s) for i, (f, s) in enumerate(zip(scanned, selected))],
            )
            self.con.execute("CREATE TEMP TABLE tenants(tenant_id VARCHAR, lo BIGINT, hi BIGINT, grain BIGINT)")
            self.con.executemany("INSERT INTO tenants VALUES (?, ?, ?, ?)", list(tenants))
            self.con.execute("CREATE TEMP TABLE segs(tenant_id VARCHAR, seg_start BIGINT)")
            if segments:
                self.con.executemany("INSERT INTO segs VALUES (?, ?)", list(segments))
            self.con.execute("SET VARIABLE paths = ?", [[f.path for f in scanned]])
            self.con.execute(f"CREATE TEMP TABLE shared AS SELECT h FROM (SELECT hash(record_id) AS h FROM {self._raw('u.record_id')}) "
                             "GROUP BY h HAVING count(*) > 1")  # fmt: skip
            self.any_shared = bool(self.con.execute("SELECT count(*) FROM shared").fetchone()[0])
        except Exception as exc:  # duckdb.Error: a damaged or foreign file
            self.con.close()
            raise UsageDataError(f"cannot read the usage Parquet: {str(exc).splitlines()[0]}") from None

    def __enter__(self) -> _Scan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    def _raw(self, columns: str = "u.*") -> str:
        """Usage and adjustment rows of the request tenants inside their windows, from the scanned files
        (an equality join on tenant, then the window filter: a range join per row costs twice as much)."""
        return f"""(
            SELECT {columns} FROM read_parquet(getvariable('paths'), filename = true, hive_partitioning = false) u
            JOIN tenants t ON u.tenant_id = t.tenant_id
            WHERE u.kind IN ('{KIND_USAGE}', '{KIND_ADJUSTMENT}')
              AND u.window_start_ms >= {self.lo} AND u.window_start_ms < {self.hi}
              AND u.window_start_ms >= t.lo AND u.window_start_ms < t.hi
        )"""

    def counted_rows(self) -> str:
        """A subquery: the counted copy of every record, from the selected files.

        Exact dedupe on record_id without a hash table of every record id: a row whose 64-bit
        hash of record_id is unique is unique; only rows sharing a hash (true duplicates, or a
        rare collision) are compared by record_id, and the copy in the earliest file counts.
        """
        columns = ("u.record_id, u.tenant_id, u.lease_id, u.plan, u.model, u.gpu_uuid, u.window_start_ms, "
                   "u.allocated_gpu_ms, u.busy_gpu_ms, u.energy_mj, u.filename, t.grain")  # fmt: skip
        plain = f"SELECT * EXCLUDE (filename) FROM {self._raw(columns)}"
        if not self.all_selected:
            plain += " WHERE filename IN (SELECT filename FROM files WHERE selected)"
        if not self.any_shared:
            return f"({plain})"
        plain += (" AND " if not self.all_selected else " WHERE ") + "hash(record_id) NOT IN (SELECT h FROM shared)"
        return f"""(
            {plain}
            UNION ALL
            SELECT * EXCLUDE (filename, file_rank, selected) FROM (
                SELECT r.*, f.file_rank, f.selected FROM {self._raw(columns)} r JOIN files f USING (filename)
                WHERE hash(r.record_id) IN (SELECT h FROM shared)
                QUALIFY row_number() OVER (PARTITION BY r.record_id ORDER BY f.file_rank) = 1
            ) WHERE selected
        )"""

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            rows: list[tuple[Any, ...]] = self.con.execute(sql).fetchall()
        except Exception as exc:  # duckdb.Error
            raise UsageDataError(f"cannot read the usage Parquet: {str(exc).splitlines()[0]}") from None
        return rows


def _files_in(files: list[UsageFile], ranges: Sequence[OffsetRange]) -> tuple[list[UsageFile], list[bool]]:
    """The files to scan for `ranges` (everything up to their end, for the earliest-copy rule) and which count."""
    ends: Cutoff = {}
    for offset_range in ranges:
        for partition, offset in offset_range.end.items():
            ends[partition] = max(ends.get(partition, 0), offset)
    scanned = [f for f in files if f.first < ends.get(f.partition, 0)]
    return scanned, [any(r.holds(f) for r in ranges) for f in scanned]


@dataclass(frozen=True)
class Explanation:
    """The usage behind one invoice line: its total and the records per GPU, from a re-run query."""

    quantity: int
    records: int
    per_gpu: list[tuple[str, str, int, int]]  # (gpu_uuid, lease_id, records, quantity)
    files: int


def explain(root: Path, query: dict[str, Any]) -> Explanation:
    """Re-run a line's recorded usage query over the Parquet: the same counted rows, summed over
    the line's time ranges, plan and model."""
    measure = query.get("measure")
    if measure not in ("allocated_gpu_ms", "energy_mj"):
        raise UsageDataError("this line is not a usage quantity (money-only lines have no usage behind them)")
    ranges = [OffsetRange.from_json(r) for r in query["ranges"]]
    scanned, selected = _files_in(list_files(root), ranges)
    if not any(selected) or not query["segments"]:
        return Explanation(0, 0, [], 0)
    tenant = str(query["tenant_id"])
    tenants = [(tenant, int(query["service_start_ms"]), int(query["service_end_ms"]), 60_000)]
    conditions = [
        " OR ".join(f"(window_start_ms >= {int(s)} AND window_start_ms < {int(e)})" for s, e in query["segments"])
    ]
    for column in ("plan", "model"):
        if query.get(column) is not None:
            conditions.append(f"{column} = {_sql_list([str(query[column])])[1:-1]}")
    with _Scan(scanned, selected, tenants, []) as scan:
        rows = scan.fetch(
            f"""
            SELECT gpu_uuid, lease_id, count(*)::BIGINT, sum({measure})::BIGINT FROM {scan.counted_rows()}
            WHERE {" AND ".join(f"({c})" for c in conditions)}
            GROUP BY gpu_uuid, lease_id ORDER BY gpu_uuid, lease_id
            """
        )
    per_gpu = [(str(g), str(lease), int(n), int(q)) for g, lease, n, q in rows]
    return Explanation(sum(q for *_, q in per_gpu), sum(n for _, _, n, _ in per_gpu), per_gpu, sum(selected))
