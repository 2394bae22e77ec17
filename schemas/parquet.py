"""The Parquet schema of usage records (imports pyarrow lazily: agents never need it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

_INT64_FIELDS = (
    "window_start_ms",
    "window_end_ms",
    "allocated_gpu_ms",
    "busy_gpu_ms",
    "energy_mj",
    "avg_power_mw",
    "peak_power_mw",
    "sample_count",
    "observed_ms",
    "unmetered_ms",
    "source_offset_min",
    "source_offset_max",
)
_STRING_FIELDS = ("record_id", "kind", "tenant_id", "lease_id", "plan", "node_id", "gpu_uuid", "model", "tou_period")


def usage_arrow_schema() -> pa.Schema:
    """Arrow schema for `usage/date=YYYY-MM-DD/*.parquet`; `date` is the hive partition column."""
    import pyarrow as pa

    columns = [pa.field(name, pa.string(), nullable=False) for name in _STRING_FIELDS]
    columns += [pa.field(name, pa.int64(), nullable=False) for name in _INT64_FIELDS]
    columns += [
        pa.field("source_partition", pa.int32(), nullable=False),
        pa.field("schema_version", pa.int16(), nullable=False),
        # version 2; last, and read by name (DuckDB union_by_name, Spark mergeSchema): version 1 files lack it
        pa.field("unhealthy_ms", pa.int64(), nullable=False),
    ]
    return pa.schema(columns, metadata={b"wattmeter.units": b"ms, mJ, mW; UTC epoch ms"})
