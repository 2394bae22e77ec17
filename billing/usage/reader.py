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
    groups: dict[str, list[UsageRequest]] = {}
    for request in requests:
        key = json.dumps([r.to_json() for r in request.ranges], sort_keys=True)
        groups.setdefault(key, []).append(request)
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
    lo = min(r.start_ms for r in group)
    hi = max(r.end_ms for r in group)
    segments = [(r.tenant_id, start, r.end_ms) for r in group for start in r.segment_starts]
    rows = _query(
        scanned,
        selected,
        segments,
        f"""
        SELECT tenant_id, plan, model, seg_start, lease_id, GROUPING(lease_id) AS lease_aggregated,
               sum(allocated_gpu_ms)::BIGINT, sum(busy_gpu_ms)::BIGINT, sum(energy_mj)::BIGINT,
               count(*)::BIGINT, max(seg_start)
        FROM {_placed_rows(lo, hi, [r.tenant_id for r in group], all(selected))}
        GROUP BY GROUPING SETS ((tenant_id, plan, model, seg_start), (tenant_id, lease_id, plan, model))
        """,
    )
    by_tenant = {r.tenant_id: results[r.key] for r in group}
    for tenant, plan, model, seg_start, lease_id, lease_aggregated, allocated, busy, energy, count, last_seg in rows:
        result = by_tenant[tenant]
        if lease_aggregated:  # the (tenant, plan, model, seg_start) set
            result.usage.append(UsageQuantity(tenant, plan, model, seg_start, allocated, busy, energy, count))
            result.records += count
        else:
            result.leases.append(LeaseQuantity(lease_id, plan, model, allocated, last_seg))


def _placed_rows(lo: int, hi: int, tenants: Sequence[str], all_selected: bool) -> str:
    """A subquery: the counted copy of every usage record of `tenants` with a window in [lo, hi)
    from the selected files, with the pricing segment it falls in (`seg_start`).

    Exact dedupe on record_id without a 10-million-string hash table: rows whose 64-bit hash
    of record_id is unique are unique; only rows sharing a hash (true duplicates, or the rare
    collision) are compared by record_id and ranked by file.
    """
    in_selected = "" if all_selected else "AND f.selected"
    return f"""(
        WITH raw AS (
            SELECT record_id, tenant_id, lease_id, plan, model, gpu_uuid, window_start_ms,
                   allocated_gpu_ms, busy_gpu_ms, energy_mj, filename, hash(record_id) AS h
            FROM read_parquet(getvariable('paths'), filename = true, hive_partitioning = false)
            WHERE kind IN ('{KIND_USAGE}', '{KIND_ADJUSTMENT}')
              AND window_start_ms >= {int(lo)} AND window_start_ms < {int(hi)}
              AND list_contains({_sql_list(tenants)}, tenant_id)
        ),
        shared AS (SELECT h FROM raw GROUP BY h HAVING count(*) > 1),
        counted AS (
            SELECT * EXCLUDE (h, filename) FROM raw
            WHERE h NOT IN (SELECT h FROM shared) {"" if all_selected else "AND filename IN (SELECT filename FROM files WHERE selected)"}
            UNION ALL
            SELECT * EXCLUDE (h, filename, file_rank, selected) FROM (
                SELECT r.*, f.file_rank, f.selected FROM raw r JOIN files f ON f.filename = r.filename
                WHERE r.h IN (SELECT h FROM shared)
                QUALIFY row_number() OVER (PARTITION BY r.record_id ORDER BY f.file_rank) = 1
            ) WHERE true {in_selected}
        )
        SELECT c.*, s.seg_start FROM counted c
        ASOF JOIN segs s ON c.tenant_id = s.tenant_id AND c.window_start_ms >= s.seg_start
        WHERE c.window_start_ms < s.period_end
    )"""


def _query(
    scanned: Sequence[UsageFile], selected: Sequence[bool], segments: Sequence[tuple[str, int, int]], sql: str
) -> list[tuple[Any, ...]]:
    """Run `sql` with the tables `files` (the scanned files, their rank, whether selected) and
    `segs` (tenant, segment start, period end) and the variable `paths`."""
    con = _connect()
    try:
        con.execute("CREATE TEMP TABLE files(filename VARCHAR, file_rank BIGINT, selected BOOLEAN)")
        con.executemany(
            "INSERT INTO files VALUES (?, ?, ?)", [(f.path, i, s) for i, (f, s) in enumerate(zip(scanned, selected))]
        )
        con.execute("CREATE TEMP TABLE segs(tenant_id VARCHAR, seg_start BIGINT, period_end BIGINT)")
        con.executemany("INSERT INTO segs VALUES (?, ?, ?)", list(segments))
        con.execute("SET VARIABLE paths = ?", [[f.path for f in scanned]])
        rows: list[tuple[Any, ...]] = con.execute(sql).fetchall()
        return rows
    except Exception as exc:  # duckdb.Error: a damaged or foreign file
        raise UsageDataError(f"cannot read the usage Parquet: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


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
    """Re-run a line's recorded usage query over the Parquet."""
    measure = query.get("measure")
    if measure not in ("allocated_gpu_ms", "energy_mj"):
        raise UsageDataError("this line is not a usage quantity (money-only lines have no usage behind them)")
    ranges = [OffsetRange.from_json(r) for r in query["ranges"]]
    scanned, selected = _files_in(list_files(root), ranges)
    if not any(selected) or not query["segments"]:
        return Explanation(0, 0, [], 0)
    tenant = str(query["tenant_id"])
    segments = [(tenant, int(start), int(end)) for start, end in query["segments"]]
    lo, hi = int(query["service_start_ms"]), int(query["service_end_ms"])
    conditions = [" OR ".join(f"(window_start_ms >= {s} AND window_start_ms < {e})" for _, s, e in segments)]
    for column in ("plan", "model"):
        if query.get(column) is not None:
            conditions.append(f"{column} = {_sql_list([str(query[column])])[1:-1]}")
    # each segment is its own "period" here so that the ASOF join keeps rows inside the line's ranges only
    rows = _query(
        scanned,
        selected,
        segments,
        f"""
        SELECT gpu_uuid, lease_id, count(*)::BIGINT, sum({measure})::BIGINT
        FROM {_placed_rows(lo, hi, [tenant], all(selected))}
        WHERE {" AND ".join(f"({c})" for c in conditions)}
        GROUP BY gpu_uuid, lease_id ORDER BY gpu_uuid, lease_id
        """,
    )
    per_gpu = [(str(g), str(lease), int(n), int(q)) for g, lease, n, q in rows]
    return Explanation(sum(q for *_, q in per_gpu), sum(n for _, _, n, _ in per_gpu), per_gpu, sum(selected))
