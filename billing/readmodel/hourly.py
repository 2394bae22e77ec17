"""The hourly rollup: the Parquet's minute records summed per (tenant, GPU, plan, hour) into the
`usage_hourly` table, which the API, the portal, the statements and the yield report read
instead of a month of minute records (a year of 1,000 GPUs is at most 8.76 M hourly rows; a
tenant's month is an index range of a few thousand).

Exact like the invoices: a record counts once (the copy in the earliest file, compared by
record_id only where a 64-bit hash is shared, as `billing.usage.reader` does), every kind is kept
(usage, adjustment, and idle time with tenant_id "" for the fleet's yield), and the rows of the
hours rebuilt are replaced in one transaction, so a rebuild is idempotent and a reader never sees
half of one. `wattmeter-billing rollup --period P` rebuilds the hours of P in every tenant's time
zone; the month close runs it after rating.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from billing.common.periods import period_bounds
from billing.leases.service import leases_overlapping
from billing.ledger.db import Ledger, now_ms
from billing.ledger.models import RollupRun, Tenant, UsageHourly
from billing.usage.errors import UsageDataError
from billing.usage.reader import (
    PARQUET_OPTIONS,
    Cutoff,
    UsageFile,
    attribute_idle,
    by_day,
    connect,
    list_files,
    read_cutoff,
)
from lake.store import LakeLocation
from schemas.leases import Lease
from schemas.units import MS_PER_DAY, MS_PER_HOUR

BATCH = 50_000
# (tenant, gpu, model, plan, hour start ms, allocated GPU-ms, busy GPU-ms, energy mJ, records)
HourlyRow = tuple[str, str, str, str, int, int, int, int, int]
HOURLY_COLUMNS = (
    "tenant_id",
    "gpu_uuid",
    "model",
    "plan",
    "hour_start_ms",
    "allocated_gpu_ms",
    "busy_gpu_ms",
    "energy_mj",
    "records",
)


@dataclass(frozen=True)
class RollupReport:
    label: str
    start_ms: int
    end_ms: int
    rows: int
    records: int


def period_span(ledger: Ledger, period: str) -> tuple[int, int]:
    """The hours covering `period` in every tenant's time zone (UTC if there are no tenants)."""
    with ledger.transaction() as session:
        zones = set(session.scalars(select(Tenant.timezone))) or {"UTC"}
    bounds = [period_bounds(period, zone) for zone in sorted(zones)]
    start = min(b[0] for b in bounds)
    end = max(b[1] for b in bounds)
    return start - start % MS_PER_HOUR, end + (-end % MS_PER_HOUR)


def hourly_batches(
    usage_root: LakeLocation,
    start_ms: int,
    end_ms: int,
    leases: Sequence[Lease] = (),
    cutoff: Cutoff | None = None,
) -> Iterator[list[HourlyRow]]:
    """The hourly rows of [start_ms, end_ms) from the files the sink has made durable, in batches of
    at most BATCH rows, one UTC day at a time: copies of a record share its day, so each day is
    deduplicated and summed on its own and neither DuckDB nor Python ever holds more than a day.
    Idle time inside the ledger's `leases` moves to the lease's tenant and plan, as the invoices
    count it (`attribute_idle`). `cutoff`: the files to count (default: the manifests' now)."""
    cutoff = read_cutoff(usage_root) if cutoff is None else cutoff
    files = [f for f in list_files(usage_root) if f.first < cutoff.get(f.partition, 0) and f.overlaps(start_ms, end_ms)]
    for day in by_day(files):
        lo, hi = max(start_ms, day[0].day_ms), min(end_ms, day[0].day_ms + MS_PER_DAY)
        mine = [lease for lease in leases if lease.start_ms < hi and (lease.end_ms is None or lease.end_ms > lo)]
        yield from _day_batches(day, lo, hi, mine, usage_root)


def hourly_rows(
    usage_root: LakeLocation, start_ms: int, end_ms: int, leases: Sequence[Lease] = ()
) -> tuple[list[HourlyRow], int]:
    """All the hourly rows of [start_ms, end_ms) in one list, sorted, and the records they count: for
    tests and small windows; `rebuild` streams `hourly_batches` instead."""
    rows = sorted(row for batch in hourly_batches(usage_root, start_ms, end_ms, leases) for row in batch)
    return rows, sum(int(row[8]) for row in rows)


def _day_batches(
    day: Sequence[UsageFile], lo_ms: int, hi_ms: int, leases: Sequence[Lease], lake: LakeLocation
) -> Iterator[list[HourlyRow]]:
    con = connect(lake)
    try:
        con.execute("CREATE TEMP TABLE files(filename VARCHAR, file_rank BIGINT)")
        con.executemany("INSERT INTO files VALUES (?, ?)", [(f.path, i) for i, f in enumerate(day)])
        con.execute("SET VARIABLE paths = ?", [[f.path for f in day]])
        moved = ""
        if leases and attribute_idle(con, leases, lo_ms, hi_ms):
            # the lease's part of an idle record counts for its tenant, and the idle row loses it (a record
            # moved whole leaves the idle hour's record count too)
            moved = """
            UNION ALL
            SELECT record_id, tenant_id, gpu_uuid, model, plan, window_start_ms, allocated_gpu_ms, busy_gpu_ms,
                   energy_mj, 1, filename FROM attributed
            UNION ALL
            SELECT '-' || record_id, idle_tenant, gpu_uuid, model, idle_plan, window_start_ms, -allocated_gpu_ms,
                   -busy_gpu_ms, -energy_mj, CASE WHEN whole THEN -1 ELSE 0 END, filename FROM attributed"""
        con.execute(f"""
            CREATE TEMP VIEW raw AS
            SELECT * FROM (
                SELECT record_id, tenant_id, gpu_uuid, model, plan, window_start_ms, allocated_gpu_ms, busy_gpu_ms,
                       energy_mj, 1 AS n, filename
                FROM read_parquet(getvariable('paths'), {PARQUET_OPTIONS}){moved}
            ) WHERE window_start_ms >= {int(lo_ms)} AND window_start_ms < {int(hi_ms)}""")
        con.execute(
            "CREATE TEMP TABLE shared AS SELECT h FROM (SELECT hash(record_id) AS h FROM raw) "
            "GROUP BY h HAVING count(*) > 1"
        )
        con.execute(f"""
            WITH counted AS (
                SELECT * EXCLUDE (filename) FROM raw WHERE hash(record_id) NOT IN (SELECT h FROM shared)
                UNION ALL
                SELECT * EXCLUDE (filename, file_rank) FROM (
                    SELECT r.*, f.file_rank FROM raw r JOIN files f USING (filename)
                    WHERE hash(r.record_id) IN (SELECT h FROM shared)
                    QUALIFY row_number() OVER (PARTITION BY r.record_id ORDER BY f.file_rank) = 1)
            )
            SELECT tenant_id, gpu_uuid, max(model), plan, window_start_ms - window_start_ms % {MS_PER_HOUR} AS hour,
                   sum(allocated_gpu_ms)::BIGINT, sum(busy_gpu_ms)::BIGINT, sum(energy_mj)::BIGINT, sum(n)::BIGINT
            FROM counted GROUP BY tenant_id, gpu_uuid, plan, hour
            HAVING sum(n) <> 0 OR sum(allocated_gpu_ms) <> 0 OR sum(energy_mj) <> 0
            """)
        while batch := con.fetchmany(BATCH):
            yield batch
    except Exception as exc:  # duckdb.Error: a damaged or foreign file
        raise UsageDataError(f"cannot read the usage Parquet: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def rebuild(ledger: Ledger, usage_root: LakeLocation, label: str, start_ms: int, end_ms: int) -> RollupReport:
    """Replace the hourly rows of [start_ms, end_ms) (whole hours) with the Parquet's, in one transaction.
    The rows stream from DuckDB into the database's bulk path (PostgreSQL COPY; SQLite batches), a
    batch at a time: the period never sits in a Python list."""
    if start_ms % MS_PER_HOUR or end_ms % MS_PER_HOUR or end_ms <= start_ms:
        raise UsageDataError("a rollup covers whole hours")
    with ledger.transaction() as session:
        leases = leases_overlapping(session, start_ms, end_ms)
    cutoff = read_cutoff(usage_root)  # read once: the run records the cut-off its rows were built from
    with ledger.transaction() as session:
        rows, records = replace_hours(session, usage_root, start_ms, end_ms, leases, cutoff)
        record_run(session, label, cutoff, rows)
    if ledger.engine.dialect.name == "postgresql":
        with ledger.transaction() as session:  # fresh planner statistics for the hours just replaced
            session.execute(text("ANALYZE usage_hourly"))
    return RollupReport(label, start_ms, end_ms, rows, records)


def replace_hours(
    session: Session, usage_root: LakeLocation, start_ms: int, end_ms: int, leases: Sequence[Lease], cutoff: Cutoff
) -> tuple[int, int]:
    """In the session's transaction: the hourly rows of [start_ms, end_ms) replaced with those of the
    files up to `cutoff`; (rows, records) written."""
    session.execute(
        delete(UsageHourly).where(UsageHourly.hour_start_ms >= start_ms, UsageHourly.hour_start_ms < end_ms)
    )
    return bulk_load(session, hourly_batches(usage_root, start_ms, end_ms, leases, cutoff))


def record_run(session: Session, label: str, cutoff: Cutoff, rows: int) -> None:
    """Remember when `label` was built and from which cut-off (what "as of" and a resumed follow read)."""
    recorded = {str(p): o for p, o in cutoff.items()}
    run = session.get(RollupRun, label)
    if run is None:
        session.add(RollupRun(period=label, cutoff=recorded, rows=rows, built_ms=now_ms()))
    else:
        run.cutoff, run.rows, run.built_ms = recorded, rows, now_ms()


def bulk_load(session: Session, batches: Iterable[list[HourlyRow]]) -> tuple[int, int]:
    """Append `batches` to usage_hourly in the session's transaction through the driver's bulk path;
    (rows, records) written."""
    driver: Any = session.connection().connection.driver_connection
    columns = ", ".join(HOURLY_COLUMNS)
    rows = records = 0
    if session.get_bind().dialect.name == "postgresql":
        with driver.cursor() as cursor, cursor.copy(f"COPY usage_hourly ({columns}) FROM STDIN") as copy:
            for batch in batches:
                for row in batch:
                    copy.write_row(row)
                rows, records = rows + len(batch), records + sum(int(row[8]) for row in batch)
        return rows, records
    cursor = driver.cursor()
    try:
        insert_sql = f"INSERT INTO usage_hourly ({columns}) VALUES ({', '.join('?' * len(HOURLY_COLUMNS))})"
        for batch in batches:
            cursor.executemany(insert_sql, batch)
            rows, records = rows + len(batch), records + sum(int(row[8]) for row in batch)
    finally:
        cursor.close()
    return rows, records


def rollup_period(ledger: Ledger, usage_root: LakeLocation, period: str) -> RollupReport:
    start, end = period_span(ledger, period)
    return rebuild(ledger, usage_root, period, start, end)
