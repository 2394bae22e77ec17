"""Adapter: the usage aggregation of `billing.usage.reader` on Apache Spark.

`spark_grouped` is an `Engine` (`aggregate(..., engine=spark_grouped)`): given the same `ScanInput`
it returns the same grouped rows and the same idle attribution as `duckdb_grouped`, computed with
Spark SQL over the same Parquet files, so that a lake too large for one machine bills identically
on a cluster (docs/spark.md). Every rule is the DuckDB engine's, translated:

- the counted rows: usage, adjustment and idle records of the request tenants, windows inside each
  tenant's [lo, hi); a record id seen in several files counts once, in the earliest-ranked file,
  and only if that file is selected (DuckDB compares ids only where a `date=` day holds one twice,
  so an id that is once in each of two days counts in both: so it does here);
- `attribute_idle`: idle records on GPU-minutes inside the ledger's leases become usage rows of
  those leases (shares with cumulative floors, stale copies stay idle), and once any does, the
  scan's raw idle rows are left out as DuckDB leaves them;
- GROUPING SETS ((tenant, plan, model, bucket), (tenant, lease, plan, model)), each group placed
  in the pricing segment that holds its bucket (its last window for a lease group).

One scan is one SQL statement, so one Spark action (the common parts are computed once: Spark
reuses their exchanges). All arithmetic is BIGINT (`div` truncates like DuckDB's `//`): no floats.
pyspark is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from billing.usage.errors import UsageDataError
from billing.usage.reader import Attribution, GroupedRow, ScanInput
from lake.store import DUCKDB_PROTOCOL
from schemas.leases import Lease
from schemas.units import MS_PER_DAY
from schemas.usage import KIND_ADJUSTMENT, KIND_IDLE, KIND_USAGE

MASTER_ENV = "WATTMETER_SPARK_MASTER"
DRIVER_MEMORY_ENV = "WATTMETER_SPARK_DRIVER_MEMORY"
SHUFFLE_PARTITIONS_ENV = "WATTMETER_SPARK_SHUFFLE_PARTITIONS"
INSTALL_HINT = "install the [spark] extra: pip install 'wattmeter[spark]'"
NO_JAVA = "Spark needs a JDK 17+ (java not found)"

_ROW_COLUMNS = (
    "record_id, kind, tenant_id, lease_id, plan, model, gpu_uuid, window_start_ms, allocated_gpu_ms, "
    "busy_gpu_ms, energy_mj, filename"
)

# attribute_idle in Spark's dialect: `attributed` holds the idle rows that count for ledger leases,
# as usage rows of those leases, one per (record copy, lease). `metered` covers every minute of the
# ledger's GPUs in the scan, not only the idle rows' minutes (the left join looks up no others), so
# that `idle` is read once, and its rows are distributed by minute, so one shuffle serves both steps.
_ATTRIBUTED_CTES = """
idle AS (
    SELECT u.record_id AS idle_id, u.gpu_uuid, u.model, u.window_start_ms,
           u.window_end_ms - u.window_start_ms AS w, u.allocated_gpu_ms AS qa, u.busy_gpu_ms AS qb,
           u.energy_mj AS qe, u.filename
    FROM {usage} u LEFT SEMI JOIN {ledger} g ON u.gpu_uuid = g.gpu_uuid
    WHERE u.kind = :idle AND u.window_start_ms >= :lo AND u.window_start_ms < :hi
      AND u.window_end_ms > u.window_start_ms
), metered AS (
    SELECT gpu_uuid, window_start_ms, sum(allocated_gpu_ms) AS u_ms, collect_set(lease_id) AS known
    FROM (SELECT DISTINCT record_id, gpu_uuid, window_start_ms, lease_id, allocated_gpu_ms
          FROM (SELECT * FROM {usage} s LEFT SEMI JOIN {ledger} g ON s.gpu_uuid = g.gpu_uuid
                WHERE s.kind IN (:usage, :adjustment) AND s.window_start_ms >= :lo AND s.window_start_ms < :hi
                DISTRIBUTE BY gpu_uuid, window_start_ms))
    GROUP BY gpu_uuid, window_start_ms
), cut AS (
    SELECT i.*, l.lease_id, l.tenant_id, l.plan, i.w - coalesce(m.u_ms, 0) AS d,
           greatest(i.window_start_ms, l.lo) - i.window_start_ms AS a,
           least(i.window_start_ms + i.w, l.hi) - i.window_start_ms AS b,
           coalesce(array_contains(m.known, l.lease_id), false) AS seen
    FROM idle i
    JOIN {ledger} l ON i.gpu_uuid = l.gpu_uuid AND i.window_start_ms < l.hi AND i.window_start_ms + i.w > l.lo
    LEFT JOIN metered m ON m.gpu_uuid = i.gpu_uuid AND m.window_start_ms = i.window_start_ms
    WHERE coalesce(m.u_ms, 0) + i.qa <= i.w
), shares AS (
    SELECT *, CASE WHEN NOT seen THEN b - a WHEN a = 0 AND b = w THEN d ELSE 0 END AS n FROM cut WHERE d > 0
), cum AS (
    SELECT *, least(sum(n) OVER (PARTITION BY idle_id, filename ORDER BY a, lease_id), d) AS c1,
           least(sum(n) OVER (PARTITION BY idle_id, filename ORDER BY a, lease_id) - n, d) AS c0
    FROM shares WHERE n > 0
), attributed AS (
    SELECT concat(idle_id, '>', lease_id) AS record_id, :idle AS kind, tenant_id, lease_id, plan, model,
           gpu_uuid, window_start_ms,
           (qa * c1) div d - (qa * c0) div d AS allocated_gpu_ms,
           (qb * c1) div d - (qb * c0) div d AS busy_gpu_ms,
           (qe * c1) div d - (qe * c0) div d AS energy_mj,
           filename
    FROM cum
), attribution AS (
    SELECT c.tenant_id, c.lease_id, sum(c.allocated_gpu_ms) AS ms
    FROM (SELECT a.*, f.selected,
                 row_number() OVER (PARTITION BY a.record_id ORDER BY f.file_rank) AS copy_rank
          FROM attributed a JOIN {files} f ON a.filename = f.uri) c
    JOIN {tenants} t ON c.tenant_id = t.tenant_id
    WHERE c.copy_rank = 1 AND c.selected AND c.window_start_ms >= t.lo AND c.window_start_ms < t.hi
    GROUP BY c.tenant_id, c.lease_id
    HAVING sum(c.allocated_gpu_ms) > 0
), source AS (
    SELECT ROW_COLUMNS, unhealthy_ms FROM {usage} WHERE kind IN (:usage, :adjustment)
    UNION ALL
    SELECT ROW_COLUMNS, 0 AS unhealthy_ms FROM attributed
    UNION ALL
    SELECT ROW_COLUMNS, unhealthy_ms FROM {usage}
    WHERE kind = :idle AND (SELECT count(*) FROM (SELECT 1 FROM attributed LIMIT 1)) = 0
)""".replace("ROW_COLUMNS", _ROW_COLUMNS)

_PLAIN_SOURCE_CTE = "source AS (SELECT * FROM {usage})"

# duckdb_grouped over _Scan.counted_rows: the counted copies, grouped, placed into segments
_GROUPED_CTES = """
raw AS (
    SELECT u.record_id, u.tenant_id, u.lease_id, u.plan, u.model, u.window_start_ms, u.allocated_gpu_ms,
           u.busy_gpu_ms, u.energy_mj, coalesce(u.unhealthy_ms, 0) AS unhealthy_ms, u.filename, t.grain
    FROM source u JOIN {tenants} t ON u.tenant_id = t.tenant_id
    WHERE u.kind IN (:usage, :adjustment, :idle)
      AND u.window_start_ms >= :lo AND u.window_start_ms < :hi
      AND u.window_start_ms >= t.lo AND u.window_start_ms < t.hi
), ranked AS (
    SELECT r.*, f.selected,
           row_number() OVER (PARTITION BY r.record_id ORDER BY f.file_rank) AS copy_rank,
           count(*) OVER (PARTITION BY r.record_id) AS copies,
           size(collect_set(f.file_day) OVER (PARTITION BY r.record_id)) AS days
    FROM raw r JOIN {files} f ON r.filename = f.uri
), counted AS (
    SELECT k.*, k.window_start_ms - k.window_start_ms % k.grain AS bucket, coalesce(a.lease_id, '') AS apart
    FROM ranked k LEFT JOIN {apart} a ON k.lease_id = a.lease_id
    WHERE k.selected AND (k.copy_rank = 1 OR k.copies = k.days)
), grouped AS (
    SELECT tenant_id, plan, model, coalesce(lease_id, apart) AS lease_key, grouping(lease_id) AS lease_aggregated,
           bucket, sum(allocated_gpu_ms) AS allocated, sum(busy_gpu_ms) AS busy, sum(energy_mj) AS energy,
           count(*) AS records, max(window_start_ms) AS last_window, sum(unhealthy_ms) AS unhealthy
    FROM counted
    GROUP BY GROUPING SETS ((tenant_id, plan, model, bucket, apart), (tenant_id, lease_id, plan, model))
), placed AS (
    SELECT g.tenant_id, g.plan, g.model, g.lease_key AS lease_id, g.lease_aggregated, s.seg_start,
           sum(g.allocated) AS allocated, sum(g.busy) AS busy, sum(g.energy) AS energy, sum(g.records) AS records,
           sum(g.unhealthy) AS unhealthy
    FROM (SELECT *, CASE WHEN lease_aggregated = 1 THEN bucket ELSE last_window END AS placed_at FROM grouped) g
    JOIN {segs} s ON g.tenant_id = s.tenant_id AND g.placed_at >= s.seg_start
        AND (s.seg_end IS NULL OR g.placed_at < s.seg_end)
    GROUP BY g.tenant_id, g.plan, g.model, g.lease_key, g.lease_aggregated, s.seg_start
)"""

_ROWS = "SELECT 'rows' AS part, * FROM placed"
_ATTRIBUTION_ROWS = (
    "SELECT 'attribution' AS part, tenant_id, NULL, NULL, lease_id, NULL, NULL, ms, NULL, NULL, NULL, NULL "
    "FROM attribution"
)


def spark_grouped(scan: ScanInput) -> tuple[list[GroupedRow], list[Attribution]]:
    """The Spark engine: the rows and attribution `duckdb_grouped` gives for `scan`, from Spark SQL."""
    if not scan.files or not scan.tenants:
        return [], []
    spark = session()
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        rows = _statement(spark, scan).collect()
    except (PySparkException, Py4JError) as exc:
        raise UsageDataError(f"cannot read the usage Parquet: {_first_line(exc)}") from None
    grouped = [_grouped_row(row[1:]) for row in rows if row[0] == "rows"]
    attribution = sorted((str(row[1]), str(row[4]), int(row[7])) for row in rows if row[0] == "attribution")
    return grouped, attribution


def session() -> Any:
    """The process's SparkSession (created on first use): master from $WATTMETER_SPARK_MASTER
    (default local[2]), driver memory from $WATTMETER_SPARK_DRIVER_MEMORY (default 1g), no UI."""
    try:
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession
    except ImportError:
        raise UsageDataError(INSTALL_HINT) from None
    if not _java_found():
        raise UsageDataError(NO_JAVA)
    builder = (
        SparkSession.builder.master(os.environ.get(MASTER_ENV) or "local[2]")
        .appName("wattmeter-usage")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.log.level", "ERROR")
        .config("spark.sql.shuffle.partitions", os.environ.get(SHUFFLE_PARTITIONS_ENV) or "4")
        .config("spark.driver.memory", os.environ.get(DRIVER_MEMORY_ENV) or "1g")
    )
    try:
        return builder.getOrCreate()
    except PySparkException as exc:  # the JVM did not start (a JDK older than 17, a bad master URL)
        raise UsageDataError(f"Spark did not start: {_first_line(exc)}") from None


def _java_found() -> bool:
    """Whether spark-submit will find a java: $JAVA_HOME/bin/java when JAVA_HOME is set, else the PATH's."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        return os.access(os.path.join(java_home, "bin", "java"), os.X_OK)
    return shutil.which("java") is not None


def _first_line(exc: BaseException) -> str:
    """The first line of what went wrong: the Java exception's message when py4j wraps one (its own
    text only says which call failed)."""
    text = str(exc)
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            text = str(java.getMessage() or java.toString())
        except Exception:  # noqa: BLE001 - the JVM is gone: keep py4j's text
            pass
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _statement(spark: Any, scan: ScanInput) -> Any:
    """The scan as one DataFrame: ('rows', GroupedRow...) and ('attribution', tenant, lease, ms) rows."""
    from pyspark.sql.functions import input_file_name

    lo, hi = min(t[1] for t in scan.tenants), max(t[2] for t in scan.tenants)
    read = spark.read.option("mergeSchema", "true").parquet(*(_spark_path(f.path) for f in scan.files))
    if "unhealthy_ms" not in read.columns:  # only version 1 files (the column came with version 2)
        from pyspark.sql.functions import lit

        read = read.withColumn("unhealthy_ms", lit(0).cast("long"))
    tables = {
        "usage": read.withColumn("filename", input_file_name()),
        "files": _files_table(spark, scan, read.inputFiles()),
        "tenants": _small(spark, list(scan.tenants), [("tenant_id", str), ("lo", int), ("hi", int), ("grain", int)]),
        "segs": _segments_table(spark, scan.segments),
        "apart": _small(spark, [(lease,) for lease in scan.apart], [("lease_id", str)]),
    }
    args = {"usage": KIND_USAGE, "adjustment": KIND_ADJUSTMENT, "idle": KIND_IDLE, "lo": lo, "hi": hi}
    if not scan.leases:
        sql = f"WITH {_PLAIN_SOURCE_CTE}, {_GROUPED_CTES} {_ROWS}"
        return spark.sql(sql, args, **tables)
    sql = f"WITH {_ATTRIBUTED_CTES}, {_GROUPED_CTES} {_ROWS} UNION ALL {_ATTRIBUTION_ROWS}"
    return spark.sql(sql, args, ledger=_ledger_table(spark, scan.leases, lo, hi), **tables)


def _small(spark: Any, rows: Sequence[tuple[Any, ...]], columns: Sequence[tuple[str, type]]) -> Any:
    """A table made on the driver (files, tenants, segments, leases: thousands of rows, not billions),
    through Arrow so that Spark plans it as a local table, and broadcast to the scan's joins."""
    import pyarrow as pa
    from pyspark.sql.functions import broadcast

    types = {str: pa.string(), int: pa.int64(), bool: pa.bool_()}
    schema = pa.schema([(name, types[kind]) for name, kind in columns])
    table = pa.table([pa.array([row[i] for row in rows], schema.field(i).type) for i in range(len(columns))], schema)
    return broadcast(spark.createDataFrame(table))


def _spark_path(path: str) -> str:
    """A path Spark reads as the file `path` names: a lake object (`wmlake://bucket/key`, as the
    reader names it for DuckDB) through Hadoop's S3A connector, another URI as it is, a local path
    made absolute."""
    if path.startswith(f"{DUCKDB_PROTOCOL}://"):
        return "s3a://" + path[len(DUCKDB_PROTOCOL) + 3 :]
    return path if "://" in path else os.path.abspath(path)


def _path_key(location: str) -> str:
    """`location` (a path of ScanInput or a URI Spark reports, `file:///...` percent-encoded) as one
    comparable string: the absolute local path, or the decoded URI of a remote store."""
    if "://" not in location and not location.startswith("file:"):
        return os.path.abspath(location)
    parts = urlsplit(location)
    if parts.scheme == "file":
        return unquote(parts.path)
    return f"{parts.scheme}://{parts.netloc}{unquote(parts.path)}"


def _files_table(spark: Any, scan: ScanInput, spark_files: Sequence[str]) -> Any:
    """(uri, file_rank, file_day, selected) per file, keyed by the name Spark's input_file_name() gives."""
    ranks = {
        _path_key(_spark_path(f.path)): (rank, f.day_ms, chosen)
        for rank, (f, chosen) in enumerate(zip(scan.files, scan.selected))
    }
    listed = {_path_key(uri): uri for uri in spark_files}
    missing = sorted(set(ranks) - set(listed))
    if missing:
        raise UsageDataError(f"cannot read the usage Parquet: Spark did not list {missing[0]}")
    rows = [(listed[key], *ranks[key]) for key in ranks]
    return _small(spark, rows, [("uri", str), ("file_rank", int), ("file_day", int), ("selected", bool)])


def _segments_table(spark: Any, segments: Sequence[tuple[str, int]]) -> Any:
    """(tenant, segment start, next segment's start or NULL): each segment as the range it holds."""
    starts: dict[str, set[int]] = {}
    for tenant, start in segments:
        starts.setdefault(tenant, set()).add(start)
    rows = []
    for tenant, values in starts.items():
        ordered = sorted(values)
        rows += [(tenant, start, end) for start, end in zip(ordered, [*ordered[1:], None])]
    return _small(spark, rows, [("tenant_id", str), ("seg_start", int), ("seg_end", int)])


def _ledger_table(spark: Any, leases: Sequence[Lease], lo_ms: int, hi_ms: int) -> Any:
    """The ledger's leases, clipped a day beyond the scan's windows as `attribute_idle` clips them."""
    rows = [
        (
            lease.lease_id,
            lease.tenant_id,
            lease.gpu_uuid,
            lease.plan,
            max(lease.start_ms, lo_ms - MS_PER_DAY),
            hi_ms + MS_PER_DAY if lease.end_ms is None else min(lease.end_ms, hi_ms + MS_PER_DAY),
        )
        for lease in leases
    ]
    columns = [("lease_id", str), ("tenant_id", str), ("gpu_uuid", str), ("plan", str), ("lo", int), ("hi", int)]
    return _small(spark, rows, columns)


def _grouped_row(row: Sequence[Any]) -> GroupedRow:
    tenant, plan, model, lease_id, lease_aggregated, seg_start, allocated, busy, energy, records, unhealthy = row
    return (
        tenant,
        plan,
        model,
        lease_id,
        int(lease_aggregated),
        int(seg_start),
        _int_or_none(allocated),
        _int_or_none(busy),
        _int_or_none(energy),
        int(records),
        int(unhealthy or 0),
    )


def _int_or_none(value: Any) -> Any:
    return None if value is None else int(value)
