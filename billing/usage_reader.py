"""Adapter: read usage records for a period from the Parquet dataset."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

from billing.rating import TenantUsage
from schemas.parquet import usage_arrow_schema
from schemas.usage import KIND_ADJUSTMENT, KIND_USAGE


class UsageDataError(RuntimeError):
    """The usage folder is missing or unreadable."""


def tenant_usage(root: Path, start_ms: int, end_ms: int) -> list[TenantUsage]:
    """Sum leased usage (and adjustments to it) per tenant over windows starting in [start_ms, end_ms).

    Records are unique by record_id; a duplicate row (for example the same window
    written by two sink generations) is counted once.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageDataError(f"no usage data at {root}: run the streams sink first (wattmeter-streams sink)")
    files = sorted(str(p) for p in root.glob("date=*/*.parquet"))
    if not files:
        return []
    dataset = ds.dataset(files, schema=usage_arrow_schema(), format="parquet")
    condition = (
        (pc.field("window_start_ms") >= start_ms)
        & (pc.field("window_start_ms") < end_ms)
        & pc.field("kind").isin([KIND_USAGE, KIND_ADJUSTMENT])
    )
    table = dataset.to_table(
        filter=condition, columns=["record_id", "tenant_id", "allocated_gpu_ms", "busy_gpu_ms", "energy_mj"]
    )
    totals: dict[str, list[int]] = {}
    seen: set[str] = set()
    for row in table.to_pylist():
        if row["record_id"] in seen:
            continue
        seen.add(row["record_id"])
        acc = totals.setdefault(row["tenant_id"], [0, 0, 0, 0])
        acc[0] += row["allocated_gpu_ms"]
        acc[1] += row["busy_gpu_ms"]
        acc[2] += row["energy_mj"]
        acc[3] += 1
    return [TenantUsage(tenant, *acc) for tenant, acc in sorted(totals.items())]
