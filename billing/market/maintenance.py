"""Maintenance windows: outages the owner announces ahead. Leased time inside one is excluded from
the SLA's leased and unhealthy time alike, as the clouds' SLAs exclude scheduled maintenance
(docs/market.md). A window must be announced before it starts; one announced late is refused,
because an SLA exclusion after the fact would let the owner erase any outage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.common.instants import ms_to_iso
from billing.ledger import models
from billing.ledger.db import audit, default_actor, now_ms
from billing.market.errors import InvalidWindow


@dataclass(frozen=True, slots=True)
class Window:
    gpus: tuple[str, ...]
    start_ms: int
    end_ms: int
    note: str = ""


def announce(
    session: Session,
    gpus: Sequence[str],
    start_ms: int,
    end_ms: int,
    note: str = "",
    actor: str | None = None,
    announced_ms: int | None = None,
) -> Window:
    """Record a maintenance window on some GPUs, announced now (it must start later)."""
    announced = now_ms() if announced_ms is None else announced_ms
    if not gpus:
        raise InvalidWindow("a maintenance window names at least one GPU")
    if end_ms <= start_ms:
        raise InvalidWindow(f"maintenance window end {ms_to_iso(end_ms)} is not after its start")
    if start_ms < announced:
        raise InvalidWindow(
            f"a maintenance window must be announced before it starts ({ms_to_iso(start_ms)} is past): "
            "an outage already under way counts against the SLA"
        )
    window = Window(tuple(sorted(set(gpus))), start_ms, end_ms, note)
    session.add(
        models.MaintenanceWindow(
            gpus=list(window.gpus), start_ms=start_ms, end_ms=end_ms, announced_ms=announced, note=note
        )
    )
    audit(session, actor or default_actor(), "maintenance.announce", "gpus", ",".join(window.gpus)[:128])
    session.flush()
    return window


def windows_overlapping(session: Session, lo_ms: int, hi_ms: int) -> list[Window]:
    query = (
        select(models.MaintenanceWindow)
        .where(models.MaintenanceWindow.start_ms < hi_ms, models.MaintenanceWindow.end_ms > lo_ms)
        .order_by(models.MaintenanceWindow.start_ms, models.MaintenanceWindow.id)
    )
    return [Window(tuple(row.gpus), row.start_ms, row.end_ms, row.note) for row in session.scalars(query)]
