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

Leased time the worker metered as idle bills to the lease (`attribute_idle`). The ledger is the
system of record of leases, and a lease can reach the worker after its samples: a late import, a
corrected end, a lease older than the topic's horizon. So the caller hands over the ledger's leases,
and an `idle` record on a GPU-minute that the worker metered under no lease counts for the ledger
lease covering it, in proportion to the lease's share of the minute (docs/billing.md, "Late leases").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from billing.pricing.rating import LeaseQuantity, UsageQuantity
from billing.usage.errors import UsageDataError
from lake.store import LakeError, LakeLocation, LakeStore
from schemas.lake import FILE_RE, MANIFESTS_DIR, folder_day_ms
from schemas.leases import Lease
from schemas.units import MS_PER_DAY, MS_PER_MINUTE
from schemas.usage import KIND_ADJUSTMENT, KIND_IDLE, KIND_USAGE

USAGE_TOPIC = "usage.records"
Cutoff = dict[int, int]  # usage.records partition -> first offset NOT included


@dataclass(frozen=True)
class UsageFile:
    path: str
    partition: int
    first: int
    last: int
    day_ms: int  # the UTC day its `date=` folder names: every record in it has a window starting that day

    def overlaps(self, lo_ms: int, hi_ms: int) -> bool:
        """Whether some window starting in [lo_ms, hi_ms) can be in this file."""
        return self.day_ms < hi_ms and self.day_ms + MS_PER_DAY > lo_ms


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
    # lease id -> allocated GPU-ms the worker metered as idle that count for the lease (already in `leases`)
    attributed: dict[str, int] = field(default_factory=dict)


def read_cutoff(root: LakeLocation, topic: str = USAGE_TOPIC) -> Cutoff:
    """The sink's manifests: per partition, the next offset it will write (everything below is durable)."""
    lake = _open(root)
    cutoff: Cutoff = {}
    for file in sorted(lake.files(MANIFESTS_DIR), key=lambda f: f.name):
        if not (file.name.startswith(f"{topic}-") and file.name.endswith(".json")):
            continue
        partition = int(file.name[: -len(".json")].rsplit("-", 1)[1])
        try:
            cutoff[partition] = int(json.loads(lake.read_bytes(file.path) or b"")["next_offset"])
        except (ValueError, KeyError) as exc:
            raise UsageDataError(f"{file.path}: unreadable sink manifest ({exc})") from None
    return cutoff


def list_files(root: LakeLocation, topic: str = USAGE_TOPIC) -> list[UsageFile]:
    """Every data file of `topic`, in (partition, first offset) order, each named as a DuckDB
    connection from `connect(lake)` reads it."""
    lake = _open(root)
    if not lake.exists():
        raise UsageDataError(f"no usage data at {lake.location}: run the streams sink first (wattmeter-streams sink)")
    files = []
    for file in lake.files():
        match = FILE_RE.match(file.name)
        day_ms = folder_day_ms(file.folder)
        if match and match["topic"] == topic and day_ms is not None:
            files.append(
                UsageFile(
                    lake.duckdb_path(file.path),
                    int(match["partition"]),
                    int(match["first"]),
                    int(match["last"]),
                    day_ms,
                )
            )
    return sorted(files, key=lambda f: (f.partition, f.first, f.path))


def lake_exists(root: LakeLocation) -> bool:
    """Whether the lake at `root` holds anything yet."""
    return _open(root).exists()


def _remote(root: LakeLocation) -> str | None:
    """The lake's location when DuckDB must be handed its file system (a bucket), else None."""
    lake = _open(root)
    return lake.location if lake.remote else None


def _open(root: LakeLocation) -> LakeStore:
    try:
        return LakeStore(root)
    except LakeError as exc:
        raise UsageDataError(str(exc)) from None


def by_day(files: Sequence[UsageFile]) -> list[list[UsageFile]]:
    """`files` grouped by their `date=` folder, oldest day first. Copies of a record share its window,
    hence its folder: a duplicate is always found within one day's files, so the dedupe never has to
    hold more than a day of record ids."""
    days: dict[int, list[UsageFile]] = {}
    for file in files:
        days.setdefault(file.day_ms, []).append(file)
    return [days[day] for day in sorted(days)]


def connect(lake: LakeLocation | None = None) -> Any:
    """A DuckDB connection for reading the lake at `lake` (two threads: billing shares a host with the sink)."""
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    if lake is not None:
        _open(lake).attach(con)
    return con


# union_by_name: a version 1 file lacks unhealthy_ms (read as NULL), whatever the files' order
PARQUET_OPTIONS = "filename = true, hive_partitioning = false, union_by_name = true"


def _sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


@dataclass(frozen=True)
class ScanInput:
    """What one scan needs, whichever engine runs it: the files in rank order (the earliest copy of a
    record counts) and which of them count, the tenants' windows and bucket grains, the pricing
    segment starts, and the ledger's leases whose idle-metered time counts for them."""

    files: tuple[UsageFile, ...]
    selected: tuple[bool, ...]
    tenants: tuple[tuple[str, int, int, int], ...]  # (tenant, window lo, window hi, bucket grain ms)
    segments: tuple[tuple[str, int], ...]  # (tenant, segment start)
    leases: tuple[Lease, ...] = ()
    lake: str | None = None  # where the files are, when not a local folder (s3://bucket/prefix)
    apart: tuple[str, ...] = ()  # leases whose usage rows are also kept apart (preempted: billing.pricing.rating)


# (tenant, plan, model, lease_id, lease_aggregated, segment start, allocated, busy, energy, records, unhealthy):
# lease_aggregated 1 is a (tenant, plan, model, segment, apart) sum, where lease_id is "apart": the lease
# for a lease of ScanInput.apart, else ""; 0 a (tenant, lease, plan, model) one
GroupedRow = tuple[str, str, str, Any, int, int, int, int, int, int, int]
Attribution = tuple[str, str, int]  # (tenant, lease, idle GPU-ms that count for the lease)
Engine = Callable[[ScanInput], tuple[list[GroupedRow], list[Attribution]]]


def aggregate(
    root: LakeLocation,
    requests: Sequence[UsageRequest],
    leases: Sequence[Lease] = (),
    engine: Engine | None = None,
    apart: Sequence[str] = (),
) -> dict[str, UsageResult]:
    """The quantities of each request, keyed by `request.key`; requests that share the same
    offset ranges are answered by one scan. `leases`: the ledger's leases of the requests' tenants
    over their windows, whose idle-metered time counts for them (`attribute_idle`). `engine` runs
    each scan (DuckDB here unless told otherwise; `billing.usage.spark_engine` is the other). `apart`:
    lease ids whose usage rows come apart from the pooled ones (UsageQuantity.apart_lease), so that
    the rater can price what a preempted lease used on its own."""
    results = {request.key: UsageResult() for request in requests}
    if not requests:
        return results
    files = list_files(root)
    remote = _remote(root)
    groups: dict[tuple[str, int], list[UsageRequest]] = {}
    seen: dict[tuple[str, str], int] = {}
    for request in requests:  # one scan per offset ranges, each tenant at most once in it
        ranges = json.dumps([r.to_json() for r in request.ranges], sort_keys=True)
        round_ = seen[(ranges, request.tenant_id)] = seen.get((ranges, request.tenant_id), -1) + 1
        groups.setdefault((ranges, round_), []).append(request)
    for group in groups.values():
        _aggregate_group(
            files, group[0].ranges, group, results, leases, engine or duckdb_grouped, remote, tuple(sorted(apart))
        )
    return results


def _aggregate_group(
    files: list[UsageFile],
    ranges: tuple[OffsetRange, ...],
    group: list[UsageRequest],
    results: dict[str, UsageResult],
    leases: Sequence[Lease],
    engine: Engine,
    remote: str | None,
    apart: tuple[str, ...] = (),
) -> None:
    if len({r.tenant_id for r in group}) != len(group):
        raise ValueError("one scan answers at most one request per tenant")
    lo, hi = min(r.start_ms for r in group), max(r.end_ms for r in group)
    # a record counts in the range holding its earliest copy: scan every file up to the
    # ranges' end so that copies in earlier files are seen, then keep the selected ones
    scanned, selected = _files_in(files, ranges, lo, hi)
    if not any(selected):
        return
    names = {r.tenant_id for r in group}
    scan = ScanInput(
        tuple(scanned),
        tuple(selected),
        tuple((r.tenant_id, r.start_ms, r.end_ms, _grain(r)) for r in group),
        tuple((r.tenant_id, start) for r in group for start in r.segment_starts),
        tuple(lease for lease in leases if lease.tenant_id in names),
        remote,
        apart,
    )
    rows, attribution = engine(scan)
    by_tenant = {r.tenant_id: results[r.key] for r in group}
    for tenant, plan, model, lease_id, lease_aggregated, seg_start, allocated, busy, energy, count, unhealthy in rows:
        result = by_tenant[tenant]
        if lease_aggregated:  # the (tenant, plan, model, segment) set
            result.usage.append(
                UsageQuantity(tenant, plan, model, seg_start, allocated, busy, energy, count, lease_id or "")
            )
            result.records += count
        else:
            result.leases.append(LeaseQuantity(lease_id, plan, model, allocated, seg_start, unhealthy_ms=unhealthy))
    for tenant, lease_id, attributed in attribution:
        by_tenant[tenant].attributed[lease_id] = attributed


def duckdb_grouped(scan_input: ScanInput) -> tuple[list[GroupedRow], list[Attribution]]:
    """The DuckDB engine: the counted rows grouped one `date=` day at a time, the days' groups
    summed, then placed into segments.

    1) Per day, group the counted rows by a time bucket that no segment boundary cuts (per tenant,
       the gcd of its boundaries and of a day: an hour for most calendars, so a bucket never spans
       two days) and by lease. Copies of a record share its day, so each day's dedupe is whole, and
       DuckDB holds one day's rows at a time: the scan's memory does not grow with the period.
    2) Sum the days' lease groups (sums, counts and the last window recombine exactly) and place
       the few bucket and lease rows into pricing segments with an ASOF join."""
    apart = "''"
    if scan_input.apart:
        apart = f"CASE WHEN c.lease_id IN ({_sql_list(scan_input.apart)[1:-1]}) THEN c.lease_id ELSE '' END"
    with _Scan(scan_input) as scan:
        scan.execute(
            "CREATE TEMP TABLE day_groups(tenant_id VARCHAR, plan VARCHAR, model VARCHAR, lease_id VARCHAR, "
            "lease_aggregated INTEGER, bucket BIGINT, allocated HUGEINT, busy HUGEINT, energy HUGEINT, "
            "records BIGINT, last_window BIGINT, unhealthy HUGEINT)"
        )
        for day in by_day(scan_input.files):
            scan.use(day)
            scan.execute(
                f"""
                INSERT INTO day_groups
                SELECT tenant_id, plan, model, coalesce(lease_id, apart), GROUPING(lease_id), bucket,
                       sum(allocated_gpu_ms), sum(busy_gpu_ms), sum(energy_mj), count(*), max(window_start_ms),
                       sum(unhealthy_ms)
                FROM (SELECT c.*, c.window_start_ms - c.window_start_ms % c.grain AS bucket, {apart} AS apart
                      FROM {scan.counted_rows()} c)
                GROUP BY GROUPING SETS ((tenant_id, plan, model, bucket, apart), (tenant_id, lease_id, plan, model))
                """
            )
        rows = scan.fetch(
            """
            WITH grouped AS (
                SELECT tenant_id, plan, model, lease_id, lease_aggregated, bucket, sum(allocated) AS allocated,
                       sum(busy) AS busy, sum(energy) AS energy, sum(records) AS records,
                       max(last_window) AS last_window, sum(unhealthy) AS unhealthy
                FROM day_groups
                GROUP BY tenant_id, plan, model, lease_id, lease_aggregated, bucket
            )
            SELECT g.tenant_id, g.plan, g.model, g.lease_id, g.lease_aggregated, s.seg_start,
                   sum(g.allocated)::BIGINT, sum(g.busy)::BIGINT, sum(g.energy)::BIGINT, sum(g.records)::BIGINT,
                   sum(g.unhealthy)::BIGINT
            FROM grouped g
            ASOF JOIN segs s ON g.tenant_id = s.tenant_id
                AND (CASE WHEN g.lease_aggregated = 1 THEN g.bucket ELSE g.last_window END) >= s.seg_start
            GROUP BY ALL
            """
        )
        return [tuple(row) for row in rows], scan.attribution


def _grain(request: UsageRequest) -> int:
    """The largest bucket (ms) that divides every boundary of the request: whole minutes at least."""
    grain = 0
    for instant in (request.start_ms, request.end_ms, *request.segment_starts):
        grain = math.gcd(grain, instant)
    return math.gcd(grain, MS_PER_DAY) or MS_PER_MINUTE


class _Scan:
    """One DuckDB connection over the scanned files, with the tables the queries join:
    `files` (rank, selected), `tenants` (id, window range, bucket grain), `segs` (segment starts)
    and `shared` (hashes of record ids seen more than once: the only rows compared by id).

    `shared` is found one `date=` day at a time (copies of a record share its day), so the
    memory of the dedupe is a day's record ids whatever the length of the period."""

    def __init__(self, scan: ScanInput) -> None:
        tenants = scan.tenants
        self.all_selected = all(scan.selected)
        self.lo = min(t[1] for t in tenants)
        self.hi = max(t[2] for t in tenants)
        self.con = connect(scan.lake)
        self.any_attributed = False
        self.attribution: list[Attribution] = []
        try:
            self.con.execute("CREATE TEMP TABLE files(filename VARCHAR, file_rank BIGINT, selected BOOLEAN)")
            self.con.executemany(
                "INSERT INTO files VALUES (?, ?, ?)",
                [(f.path, i, s) for i, (f, s) in enumerate(zip(scan.files, scan.selected))],
            )
            self.con.execute("CREATE TEMP TABLE tenants(tenant_id VARCHAR, lo BIGINT, hi BIGINT, grain BIGINT)")
            self.con.executemany("INSERT INTO tenants VALUES (?, ?, ?, ?)", list(tenants))
            self.con.execute("CREATE TEMP TABLE segs(tenant_id VARCHAR, seg_start BIGINT)")
            if scan.segments:
                self.con.executemany("INSERT INTO segs VALUES (?, ?)", list(scan.segments))
            self.con.execute("SET VARIABLE paths = ?", [[f.path for f in scan.files]])
            if scan.leases and attribute_idle(self.con, scan.leases, self.lo, self.hi):
                self.any_attributed = True
                self.attribution = self._attribution()
            self.con.execute("CREATE TEMP TABLE shared(h UBIGINT)")
            for day in by_day(scan.files):
                self.use(day)
                self.con.execute(
                    f"INSERT INTO shared SELECT h FROM (SELECT hash(record_id) AS h FROM {self._raw('u.record_id')}) "
                    "GROUP BY h HAVING count(*) > 1"
                )
            self.con.execute("SET VARIABLE paths = ?", [[f.path for f in scan.files]])
            self.any_shared = bool(self.con.execute("SELECT count(*) FROM shared").fetchone()[0])
        except Exception as exc:  # duckdb.Error: a damaged or foreign file
            self.con.close()
            raise UsageDataError(f"cannot read the usage Parquet: {str(exc).splitlines()[0]}") from None

    def __enter__(self) -> _Scan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    def _attribution(self) -> list[Attribution]:
        """Per (tenant, lease): the attributed GPU-ms that count here (earliest copy, selected files,
        the tenant's window)."""
        return [
            (str(t), str(lease), int(ms))
            for t, lease, ms in self.con.execute(
                """
                WITH counted AS (
                    SELECT a.*, f.selected FROM attributed a JOIN files f USING (filename)
                    QUALIFY row_number() OVER (PARTITION BY a.record_id ORDER BY f.file_rank) = 1
                )
                SELECT c.tenant_id, c.lease_id, sum(c.allocated_gpu_ms)::BIGINT FROM counted c
                JOIN tenants t ON c.tenant_id = t.tenant_id
                WHERE c.selected AND c.window_start_ms >= t.lo AND c.window_start_ms < t.hi
                GROUP BY ALL HAVING sum(c.allocated_gpu_ms) > 0 ORDER BY ALL
                """
            ).fetchall()
        ]

    def _raw(self, columns: str = "u.*") -> str:
        """Usage and adjustment rows of the request tenants inside their windows, from the files the
        variable `paths` names (an equality join on tenant, then the window filter: a range join per
        row costs twice as much), and the idle rows attributed to their ledger leases."""
        source = f"read_parquet(getvariable('paths'), {PARQUET_OPTIONS})"
        if self.any_attributed:
            source = f"""(
                SELECT {_ROW_COLUMNS}, unhealthy_ms, filename FROM {source}
                WHERE kind IN ('{KIND_USAGE}', '{KIND_ADJUSTMENT}')
                UNION ALL
                SELECT {_ROW_COLUMNS}, 0, filename FROM attributed WHERE list_contains(getvariable('paths'), filename)
            )"""
        return f"""(
            SELECT {columns} FROM {source} u
            JOIN tenants t ON u.tenant_id = t.tenant_id
            WHERE u.kind IN ('{KIND_USAGE}', '{KIND_ADJUSTMENT}', '{KIND_IDLE}')
              AND u.window_start_ms >= {self.lo} AND u.window_start_ms < {self.hi}
              AND u.window_start_ms >= t.lo AND u.window_start_ms < t.hi
        )"""

    def counted_rows(self) -> str:
        """A subquery: the counted copy of every record, from the selected files.

        Exact dedupe on record_id without a hash table of every record id: a row whose 64-bit
        hash of record_id is unique is unique; only rows sharing a hash (true duplicates, or a
        rare collision) are compared by record_id, and the copy in the earliest file counts.
        """
        columns = (
            "u.record_id, u.tenant_id, u.lease_id, u.plan, u.model, u.gpu_uuid, u.window_start_ms, "
            "u.allocated_gpu_ms, u.busy_gpu_ms, u.energy_mj, coalesce(u.unhealthy_ms, 0) AS unhealthy_ms, "
            "u.filename, t.grain"
        )
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

    def use(self, files: Sequence[UsageFile]) -> None:
        """Read only `files` from now on (the variable `paths` of every subquery)."""
        self.con.execute("SET VARIABLE paths = ?", [[f.path for f in files]])

    def execute(self, sql: str) -> None:
        try:
            self.con.execute(sql)
        except Exception as exc:  # duckdb.Error
            raise UsageDataError(f"cannot read the usage Parquet: {str(exc).splitlines()[0]}") from None

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            rows: list[tuple[Any, ...]] = self.con.execute(sql).fetchall()
        except Exception as exc:  # duckdb.Error
            raise UsageDataError(f"cannot read the usage Parquet: {str(exc).splitlines()[0]}") from None
        return rows


_ROW_COLUMNS = (
    "record_id, kind, tenant_id, lease_id, plan, model, gpu_uuid, window_start_ms, allocated_gpu_ms, "
    "busy_gpu_ms, energy_mj"
)


def attribute_idle(con: Any, leases: Sequence[Lease], lo_ms: int, hi_ms: int) -> bool:
    """Build the temp table `attributed` on `con` (whose variable `paths` names the files): the idle
    records with a window start in [lo_ms, hi_ms) that fall inside the ledger's `leases`, one row per
    (record copy, lease), as usage rows of the lease. True when there is any.

    The rule (docs/billing.md, "Late leases"), per idle record of a GPU-minute W = [ws, ws + w), with
    U the GPU-ms the worker metered under leases on that GPU-minute (its usage and adjustment records):
    - a ledger lease L the worker did not meter in W (it learnt of L too late) takes the share
      |L ∩ W| / (w - U) of the record: the idle time is the minute less what the worker metered under
      leases, and L's part of it is L's part of the minute. A whole minute inside L moves whole; the
      parts of a minute cut by lease edges never add up to more than the record (cumulative floors:
      `q * min(c_k, d) // d - q * min(c_k-1, d) // d`, c the overlaps summed in lease order, d = w - U);
    - a lease the worker did meter in W keeps the worker's split, which cut at L's edges by the samples'
      own times, unless L covers W wholly: then the idle time in W can only be L's too (the worker
      learnt of L, or of its later end, within the minute), and it moves whole;
    - when U plus the record exceed the minute, the idle record is a stale copy of time the worker
      metered again under a lease (it reprocessed after learning of the lease): it stays idle, so
      nothing is counted twice.
    The attributed row's id is the record's id and the lease's, so two copies of one record (two
    sink generations) still dedupe to one, and one record cut by two leases gives two rows."""
    day = MS_PER_DAY
    con.execute(
        "CREATE OR REPLACE TEMP TABLE ledger_leases(lease_id VARCHAR, tenant_id VARCHAR, gpu_uuid VARCHAR, "
        "plan VARCHAR, lo BIGINT, hi BIGINT)"
    )
    con.executemany(
        "INSERT INTO ledger_leases VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                lease.lease_id,
                lease.tenant_id,
                lease.gpu_uuid,
                lease.plan,
                max(lease.start_ms, lo_ms - day),
                hi_ms + day if lease.end_ms is None else min(lease.end_ms, hi_ms + day),
            )
            for lease in leases
        ],
    )
    parquet = f"read_parquet(getvariable('paths'), {PARQUET_OPTIONS})"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE attributed AS
        WITH idle AS MATERIALIZED (
            SELECT u.record_id AS idle_id, u.tenant_id AS idle_tenant, u.plan AS idle_plan, u.gpu_uuid, u.model,
                   u.window_start_ms, u.window_end_ms - u.window_start_ms AS w, u.allocated_gpu_ms AS qa,
                   u.busy_gpu_ms AS qb, u.energy_mj AS qe, u.filename
            FROM {parquet} u SEMI JOIN (SELECT DISTINCT gpu_uuid FROM ledger_leases) g USING (gpu_uuid)
            WHERE u.kind = '{KIND_IDLE}' AND u.window_start_ms >= {int(lo_ms)} AND u.window_start_ms < {int(hi_ms)}
              AND u.window_end_ms > u.window_start_ms
        ), metered AS (
            SELECT gpu_uuid, window_start_ms, sum(allocated_gpu_ms) AS u_ms, list(DISTINCT lease_id) AS known
            FROM (SELECT DISTINCT s.record_id, s.gpu_uuid, s.window_start_ms, s.lease_id, s.allocated_gpu_ms
                  FROM {parquet} s
                  SEMI JOIN (SELECT DISTINCT gpu_uuid, window_start_ms FROM idle) k USING (gpu_uuid, window_start_ms)
                  WHERE s.kind IN ('{KIND_USAGE}', '{KIND_ADJUSTMENT}'))
            GROUP BY ALL
        ), cut AS (
            SELECT i.*, l.lease_id, l.tenant_id, l.plan, i.w - coalesce(m.u_ms, 0) AS d,
                   greatest(i.window_start_ms, l.lo) - i.window_start_ms AS a,
                   least(i.window_start_ms + i.w, l.hi) - i.window_start_ms AS b,
                   coalesce(list_contains(m.known, l.lease_id), false) AS seen
            FROM idle i
            JOIN ledger_leases l ON i.gpu_uuid = l.gpu_uuid
                AND i.window_start_ms < l.hi AND i.window_start_ms + i.w > l.lo
            LEFT JOIN metered m ON m.gpu_uuid = i.gpu_uuid AND m.window_start_ms = i.window_start_ms
            WHERE coalesce(m.u_ms, 0) + i.qa <= i.w
        ), shares AS (
            SELECT *, CASE WHEN NOT seen THEN b - a WHEN a = 0 AND b = w THEN d ELSE 0 END AS n FROM cut WHERE d > 0
        ), cum AS (
            SELECT *, least(sum(n) OVER (PARTITION BY idle_id, filename ORDER BY a, lease_id), d) AS c1,
                   least(sum(n) OVER (PARTITION BY idle_id, filename ORDER BY a, lease_id) - n, d) AS c0
            FROM shares WHERE n > 0
        )
        SELECT idle_id || '>' || lease_id AS record_id, '{KIND_IDLE}' AS kind, tenant_id, lease_id, plan, model,
               gpu_uuid, window_start_ms,
               (qa * c1 // d - qa * c0 // d)::BIGINT AS allocated_gpu_ms,
               (qb * c1 // d - qb * c0 // d)::BIGINT AS busy_gpu_ms,
               (qe * c1 // d - qe * c0 // d)::BIGINT AS energy_mj,
               filename, idle_id, idle_tenant, idle_plan, (c0 = 0 AND c1 = d) AS whole
        FROM cum
        """
    )
    return bool(con.execute("SELECT count(*) FROM attributed").fetchone()[0])


def _files_in(
    files: list[UsageFile], ranges: Sequence[OffsetRange], lo_ms: int, hi_ms: int
) -> tuple[list[UsageFile], list[bool]]:
    """The files to scan for `ranges` over windows in [lo_ms, hi_ms) (everything up to the ranges' end,
    for the earliest-copy rule, in the days of the windows: copies share a day) and which count."""
    ends: Cutoff = {}
    for offset_range in ranges:
        for partition, offset in offset_range.end.items():
            ends[partition] = max(ends.get(partition, 0), offset)
    scanned = [f for f in files if f.first < ends.get(f.partition, 0) and f.overlaps(lo_ms, hi_ms)]
    return scanned, [any(r.holds(f) for r in ranges) for f in scanned]


@dataclass(frozen=True)
class Explanation:
    """The usage behind one invoice line: its total and the records per GPU, from a re-run query."""

    quantity: int
    records: int
    per_gpu: list[tuple[str, str, int, int]]  # (gpu_uuid, lease_id, records, quantity)
    files: int


def explain(root: LakeLocation, query: dict[str, Any], leases: Sequence[Lease] = ()) -> Explanation:
    """Re-run a line's recorded usage query over the Parquet: the same counted rows (with the idle
    time attributed to the ledger's `leases`), summed over the line's time ranges, plan and model."""
    measure = query.get("measure")
    if measure not in ("allocated_gpu_ms", "energy_mj"):
        raise UsageDataError("this line is not a usage quantity (money-only lines have no usage behind them)")
    ranges = [OffsetRange.from_json(r) for r in query["ranges"]]
    tenant = str(query["tenant_id"])
    lo, hi = int(query["service_start_ms"]), int(query["service_end_ms"])
    scanned, selected = _files_in(list_files(root), ranges, lo, hi)
    if not any(selected) or not query["segments"]:
        return Explanation(0, 0, [], 0)
    mine = tuple(lease for lease in leases if lease.tenant_id == tenant)
    conditions = [
        " OR ".join(f"(window_start_ms >= {int(s)} AND window_start_ms < {int(e)})" for s, e in query["segments"])
    ]
    for column in ("plan", "model"):
        if query.get(column) is not None:
            conditions.append(f"{column} = {_sql_list([str(query[column])])[1:-1]}")
    scan_input = ScanInput(tuple(scanned), tuple(selected), ((tenant, lo, hi, MS_PER_MINUTE),), (), mine, _remote(root))
    with _Scan(scan_input) as scan:  # a day at a time, as duckdb_grouped does
        scan.execute("CREATE TEMP TABLE day_groups(gpu_uuid VARCHAR, lease_id VARCHAR, n BIGINT, q HUGEINT)")
        for day in by_day(scanned):
            scan.use(day)
            scan.execute(
                f"""
                INSERT INTO day_groups
                SELECT gpu_uuid, lease_id, count(*), sum({measure}) FROM {scan.counted_rows()}
                WHERE {" AND ".join(f"({c})" for c in conditions)}
                GROUP BY gpu_uuid, lease_id
                """
            )
        rows = scan.fetch(
            "SELECT gpu_uuid, lease_id, sum(n)::BIGINT, sum(q)::BIGINT FROM day_groups "
            "GROUP BY gpu_uuid, lease_id ORDER BY gpu_uuid, lease_id"
        )
    per_gpu = [(str(g), str(lease), int(n), int(q)) for g, lease, n, q in rows]
    return Explanation(sum(q for *_, q in per_gpu), sum(n for _, _, n, _ in per_gpu), per_gpu, sum(selected))
