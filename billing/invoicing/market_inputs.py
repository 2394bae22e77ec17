"""What the valley market's rules need from the ledger, for rating (billing.pricing.market_terms):
the leases the owner preempted, and per plan the leased and unhealthy GPU time of a tenant.

Unhealthy time (the SLA) is leased time that was not metered, or metered while the GPU reported
NVML errors: per lease, its time inside the service period minus the GPU-ms the usage records hold
for it (a GPU that vanished, an agent down, a gap: no records), plus their `unhealthy_ms` (the
worker's NVML error stretches, usage records version 2), less the part inside maintenance windows
announced ahead on its GPU
(`billing.market.maintenance`), which counts neither as leased nor as unhealthy. Only time before
`as_of_ms` counts (the run's clock less `SETTLE_MS`, the usage still on its way): a draft made
mid-period does not count the last minutes, not yet in the lake, as an outage. Times are integer
ms, UTC.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from billing.ledger import models
from billing.market.maintenance import Window, windows_overlapping
from billing.market.preemption import OWNER
from billing.pricing.market_terms import Availability, Preemption
from billing.pricing.rating import LeaseQuantity

SETTLE_MS = 15 * 60_000  # usage younger than this may still be on its way to the lake


def preempted_leases(session: Session, lo_ms: int, hi_ms: int, tenant_ids: Iterable[str]) -> dict[str, Preemption]:
    """The leases of these tenants the owner ended inside [lo_ms, hi_ms], by lease id."""
    tenants = sorted(set(tenant_ids))
    if not tenants:
        return {}
    query = select(models.Lease).where(
        models.Lease.ended_by == OWNER,
        models.Lease.tenant_id.in_(tenants),
        models.Lease.start_ms < hi_ms,
        models.Lease.end_ms > lo_ms,
    )
    return {
        row.lease_id: Preemption(row.lease_id, row.start_ms, row.noticed_ms or row.end_ms or 0, row.end_ms or 0)
        for row in session.scalars(query)
    }


def _maintained_ms(windows: list[Window], gpu: str, lo: int, hi: int) -> int:
    """How much of [lo, hi) maintenance windows on `gpu` cover (windows merged: no double count)."""
    spans = sorted((max(lo, w.start_ms), min(hi, w.end_ms)) for w in windows if gpu in w.gpus)
    covered, cursor = 0, lo
    for start, end in spans:
        start = max(start, cursor)
        if end > start:
            covered += end - start
            cursor = end
    return covered


def lease_health(
    session: Session, tenant_id: str, lo_ms: int, hi_ms: int, metered: Iterable[LeaseQuantity], as_of_ms: int
) -> Mapping[str, Availability]:
    """Per plan: the tenant's leased GPU-ms in [lo_ms, min(hi_ms, as_of_ms)) and how much of it was unhealthy."""
    hi_ms = min(hi_ms, as_of_ms)
    held: dict[str, int] = defaultdict(int)
    errored: dict[str, int] = defaultdict(int)
    for quantity in metered:
        held[quantity.lease_id] += quantity.allocated_gpu_ms
        errored[quantity.lease_id] += quantity.unhealthy_ms
    query = select(models.Lease).where(
        models.Lease.tenant_id == tenant_id,
        models.Lease.start_ms < hi_ms,
        or_(models.Lease.end_ms.is_(None), models.Lease.end_ms > lo_ms),
    )
    rows = list(session.scalars(query))
    windows = windows_overlapping(session, lo_ms, hi_ms) if rows else []
    leased: dict[str, int] = defaultdict(int)
    unhealthy: dict[str, int] = defaultdict(int)
    for row in rows:
        start, end = max(lo_ms, row.start_ms), min(hi_ms, row.end_ms if row.end_ms is not None else hi_ms)
        if end <= start:
            continue
        maintained = _maintained_ms(windows, row.gpu_uuid, start, end)
        span = (end - start) - maintained
        leased[row.plan] += span
        unmetered = max(0, span - held.get(row.lease_id, 0))
        unhealthy[row.plan] += min(span, unmetered + errored.get(row.lease_id, 0))
    return {plan: Availability(leased[plan], unhealthy[plan]) for plan in sorted(leased)}
