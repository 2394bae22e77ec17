"""Builders for billing tests: usage records written through the real Parquet sink, and a
ledger with tenants, a rate card and contracts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from billing.ledger.db import Ledger
from billing.ledger.store import add_contract, store_rate_card, upsert_tenant
from billing.pricing.ratecards import parse_rate_card
from schemas.usage import KIND_USAGE, UsageRecord
from streams.sink import ParquetSink

NOV_1 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
DEC_1 = 1_796_083_200_000  # 2026-12-01T00:00:00Z
MINUTE = 60_000
HOUR = 3_600_000

# A card whose arithmetic is easy by hand: peak 3.00 / valley 1.20 per GPU-hour (UTC, valley
# 00:00-06:00 on weekdays, all weekend), energy 0.10 per kWh x PUE 1.5, 10 % tax in "XX".
SIMPLE_CARD = """
name = "simple"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "USD"
pue = "1.5"
increment_s = 1
minimum_s = 60
[calendar]
timezone = "UTC"
weekday = { valley = [[0, 6]] }
weekend = { valley = [[0, 24]] }
[gpu_hour."*".on_demand]
peak = "3.00"
valley = "1.20"
[energy_kwh]
"*" = "0.10"
[tax]
"XX" = "0.10"
"*" = "0"
"""


def usage_row(
    tenant: str,
    window_start_ms: int,
    *,
    gpu: str = "GPU-1",
    model: str = "H100",
    plan: str = "on_demand",
    lease: str | None = None,
    allocated_ms: int = MINUTE,
    energy_mj: int = 0,
    kind: str = KIND_USAGE,
    suffix: str = "",
) -> dict[str, Any]:
    lease_id = lease or f"lease-{tenant}-{gpu}"
    return UsageRecord(
        record_id=f"{gpu}/{window_start_ms}/{kind}/{tenant}/{lease_id}{suffix}",
        kind=kind,
        tenant_id=tenant,
        lease_id=lease_id,
        plan=plan,
        node_id="node-1",
        gpu_uuid=gpu,
        model=model,
        window_start_ms=window_start_ms,
        window_end_ms=window_start_ms + MINUTE,
        tou_period="peak",
        allocated_gpu_ms=allocated_ms,
        busy_gpu_ms=allocated_ms // 2,
        energy_mj=energy_mj,
        avg_power_mw=0,
        peak_power_mw=0,
        sample_count=60,
        observed_ms=allocated_ms,
        unmetered_ms=0,
        source_partition=0,
        source_offset_min=0,
        source_offset_max=0,
    ).to_dict()


def minutes(tenant: str, start_ms: int, count: int, **kwargs: Any) -> list[dict[str, Any]]:
    return [usage_row(tenant, start_ms + i * MINUTE, **kwargs) for i in range(count)]


class UsageWriter:
    """Writes batches to the Parquet exactly as the sink does (offset-named files, manifests)."""

    def __init__(self, root: Path, partition: int = 0) -> None:
        self.sink = ParquetSink(root, "usage.records")
        self.root = root
        self.partition = partition
        self.next_offset = self.sink.next_offset(partition)

    def write(self, rows: list[dict[str, Any]]) -> None:
        first = self.next_offset
        self.sink.write_batch(self.partition, first, first + len(rows) - 1, rows)
        self.next_offset = first + len(rows)


def ledger_with(url: str, card_text: str = SIMPLE_CARD, tenants: dict[str, dict[str, str]] | None = None) -> Ledger:
    ledger = Ledger(url)
    card = parse_rate_card(card_text, "test card")
    with ledger.transaction() as session:
        store_rate_card(session, "test", card)
        for tenant_id, fields in (tenants or {"acme": {}}).items():
            upsert_tenant(session, "test", tenant_id, currency=card.currency, **fields)
            add_contract(session, "test", tenant_id, card.name, card.effective_from_ms)
    return ledger


def hourly_table(ledger: Ledger) -> list[tuple[Any, ...]]:
    """The usage_hourly table as sorted HourlyRow tuples (what `hourly_rows` rebuilds in full)."""
    from sqlalchemy import select

    from billing.ledger.models import UsageHourly

    with ledger.transaction() as session:
        rows = session.execute(
            select(
                UsageHourly.tenant_id,
                UsageHourly.gpu_uuid,
                UsageHourly.model,
                UsageHourly.plan,
                UsageHourly.hour_start_ms,
                UsageHourly.allocated_gpu_ms,
                UsageHourly.busy_gpu_ms,
                UsageHourly.energy_mj,
                UsageHourly.records,
            )
        ).all()
    return sorted(tuple(row) for row in rows)
