"""Leases' system of record: open, end, list and import leases in the billing database.

Every change runs in the caller's one transaction (`Ledger.transaction()`) and writes,
beside the lease itself, an audit entry per lease and one `LeaseOutbox` row per GPU whose
timeline changed; `billing.leases.outbox` publishes those GPUs' current timelines to
`gpu.leases` after the commit. A change and its outbox row are committed together or not
at all, which is what keeps the topic in step with the database.

Repeating a request is harmless: a lease id defaults to a hash of (tenant, GPU, start),
opening or importing a lease that exists with the same fields changes nothing, and ending
a lease again at the same instant changes nothing (no audit entry, no outbox row: nothing
happened). Leases of one GPU never overlap: on PostgreSQL a per-GPU advisory lock
serializes the check-then-insert of concurrent writers; SQLite takes its write lock at
BEGIN (`billing.ledger.db`), which serializes them already.

Times are integer ms since the epoch, UTC; a lease covers [start, end), end None = open.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from billing.common.instants import ms_to_iso
from billing.leases.errors import (
    InvalidLease,
    LeaseAlreadyEnded,
    LeaseError,
    LeaseIdConflict,
    LeaseOverlap,
    UnknownLease,
    UnknownTenant,
)
from billing.leases.importers import LeaseRow
from billing.leases.offers import OfferIndex
from billing.ledger import models
from billing.ledger.db import audit, default_actor, now_ms
from schemas.leases import PLANS, Lease
from schemas.units import MAX_INSTANT_MS, MIN_INSTANT_MS, check_instant_ms

DEFAULT_PLAN = "on_demand"
MAX_ID_LENGTH = 128  # the ledger's String(128) columns
_CHUNK = 500  # ids per IN (...) query


@dataclass(frozen=True, slots=True)
class ImportResult:
    created: tuple[str, ...]  # lease ids written, in file order
    unchanged: int  # rows that matched a lease already held (or an earlier row)
    gpus: tuple[str, ...]  # GPUs whose timeline changed (one outbox row each)


def default_lease_id(tenant_id: str, gpu_uuid: str, start_ms: int) -> str:
    """The deterministic id of a lease without one: the same request gives the same id."""
    digest = hashlib.sha256(f"{tenant_id}\x1f{gpu_uuid}\x1f{start_ms}".encode()).hexdigest()
    return f"lease-{digest[:24]}"


def format_ms(ms: int | None) -> str:
    """An instant for people: ISO 8601 UTC with a Z; `open` for no end; the bare ms of one outside
    the bound (a row written before times were bounded), which no datetime can hold."""
    if ms is None:
        return "open"
    if not MIN_INSTANT_MS <= ms < MAX_INSTANT_MS:
        return f"{ms} ms (outside 1970..9999)"
    return ms_to_iso(ms)


def _span(lease: Lease) -> str:
    return f"[{format_ms(lease.start_ms)}, {format_ms(lease.end_ms)})"


def _contract(row: models.Lease) -> Lease:
    return Lease(row.lease_id, row.tenant_id, row.gpu_uuid, row.start_ms, row.end_ms, row.plan)


def _check_instant(ms: int, what: str) -> None:
    """The one bound for instants (schemas.units: years 1970-9999, no bools), as an InvalidLease."""
    try:
        check_instant_ms(ms, what)
    except ValueError as exc:
        raise InvalidLease(str(exc)) from None


def _check_fields(lease: Lease) -> None:
    for name, value in (("lease_id", lease.lease_id), ("tenant_id", lease.tenant_id), ("gpu_uuid", lease.gpu_uuid)):
        if not value or not value.strip():
            raise InvalidLease(f"{name} must not be empty")
        if len(value) > MAX_ID_LENGTH:
            raise InvalidLease(f"{name} is longer than {MAX_ID_LENGTH} characters")
    if lease.plan not in PLANS:
        raise InvalidLease(f"unknown plan {lease.plan!r}: use one of {', '.join(PLANS)}")
    _check_instant(lease.start_ms, f"lease {lease.lease_id}: start")
    if lease.end_ms is not None:
        _check_instant(lease.end_ms, f"lease {lease.lease_id}: end")
    if lease.end_ms is not None and lease.end_ms <= lease.start_ms:
        raise InvalidLease(
            f"lease {lease.lease_id}: end {format_ms(lease.end_ms)} is not after its start {format_ms(lease.start_ms)}"
        )


def _differences(held: Lease, asked: Lease) -> str:
    parts = []
    for name, a, b in (
        ("tenant", held.tenant_id, asked.tenant_id),
        ("GPU", held.gpu_uuid, asked.gpu_uuid),
        ("start", format_ms(held.start_ms), format_ms(asked.start_ms)),
        ("end", format_ms(held.end_ms), format_ms(asked.end_ms)),
        ("plan", held.plan, asked.plan),
    ):
        if a != b:
            parts.append(f"{name} {a} (asked: {b})")
    return ", ".join(parts)


def _id_conflict(held: Lease, asked: Lease) -> LeaseIdConflict:
    return LeaseIdConflict(f"lease {held.lease_id} exists with different fields: {_differences(held, asked)}")


def _overlap(asked: Lease, other: Lease) -> LeaseOverlap:
    return LeaseOverlap(
        f"lease {asked.lease_id} {_span(asked)} overlaps lease {other.lease_id} {_span(other)} on GPU {asked.gpu_uuid}"
    )


def lock_gpus(session: Session, gpus: Iterable[str]) -> None:
    """PostgreSQL: serialize writers per GPU until the transaction ends (sorted: no deadlock)."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE holds the database's write lock already
    for gpu in sorted(set(gpus)):
        key = int.from_bytes(hashlib.sha256(f"wattmeter-lease-gpu\x1f{gpu}".encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def add_outbox(session: Session, gpus: Iterable[str]) -> None:
    created = now_ms()
    session.add_all(models.LeaseOutbox(gpu_uuid=gpu, created_ms=created, published_ms=None) for gpu in sorted(gpus))


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for index in range(0, len(values), _CHUNK):
        yield values[index : index + _CHUNK]


def open_lease(
    session: Session,
    tenant_id: str,
    gpu_uuid: str,
    start_ms: int,
    end_ms: int | None = None,
    plan: str = DEFAULT_PLAN,
    lease_id: str | None = None,
    actor: str | None = None,
) -> Lease:
    """Open a lease (optionally with its end). Opening the same lease again is a no-op."""
    asked = Lease(
        lease_id or default_lease_id(tenant_id, gpu_uuid, start_ms), tenant_id, gpu_uuid, start_ms, end_ms, plan
    )
    _check_fields(asked)
    if session.get(models.Tenant, tenant_id) is None:
        raise UnknownTenant(f"unknown tenant {tenant_id!r}")
    lock_gpus(session, [gpu_uuid])
    held_row = session.get(models.Lease, asked.lease_id)
    if held_row is not None:
        held = _contract(held_row)
        if held == asked:
            return held
        raise _id_conflict(held, asked)
    offer_id = OfferIndex(session).offer_for(asked)
    conditions = [models.Lease.gpu_uuid == gpu_uuid, or_(models.Lease.end_ms.is_(None), models.Lease.end_ms > start_ms)]
    if end_ms is not None:
        conditions.append(models.Lease.start_ms < end_ms)
    other = session.scalars(select(models.Lease).where(*conditions).order_by(models.Lease.start_ms).limit(1)).first()
    if other is not None:
        raise _overlap(asked, _contract(other))
    session.add(
        models.Lease(
            lease_id=asked.lease_id,
            tenant_id=tenant_id,
            gpu_uuid=gpu_uuid,
            plan=plan,
            start_ms=start_ms,
            end_ms=end_ms,
            created_ms=now_ms(),
            offer_id=offer_id,
        )
    )
    audit(
        session,
        actor or default_actor(),
        "lease.open",
        "lease",
        asked.lease_id,
        tenant_id=tenant_id,
        gpu_uuid=gpu_uuid,
        start_ms=start_ms,
        end_ms=end_ms,
        plan=plan,
        offer_id=offer_id,
    )
    add_outbox(session, [gpu_uuid])
    session.flush()
    return asked


def end_lease(session: Session, lease_id: str, end_ms: int, actor: str | None = None) -> Lease:
    """End an open lease at `end_ms`. Ending it again at the same instant is a no-op."""
    _check_instant(end_ms, f"lease {lease_id}: end")
    row = session.get(models.Lease, lease_id)
    if row is None:
        raise UnknownLease(f"unknown lease {lease_id!r}")
    lock_gpus(session, [row.gpu_uuid])
    row = session.get(models.Lease, lease_id, populate_existing=True, with_for_update=True)
    assert row is not None  # leases are never deleted
    if row.end_ms is not None:
        if row.end_ms == end_ms:
            return _contract(row)
        raise LeaseAlreadyEnded(
            f"lease {lease_id} already ended at {format_ms(row.end_ms)} (asked: {format_ms(end_ms)})"
        )
    if end_ms <= row.start_ms:
        raise InvalidLease(
            f"lease {lease_id}: end {format_ms(end_ms)} is not after its start {format_ms(row.start_ms)}"
        )
    row.end_ms = end_ms  # an open lease only shrinks: it cannot come to overlap another
    row.ended_by = "tenant"  # billed as always (the owner's end is billing.market.preemption)
    audit(session, actor or default_actor(), "lease.end", "lease", lease_id, gpu_uuid=row.gpu_uuid, end_ms=end_ms)
    add_outbox(session, [row.gpu_uuid])
    session.flush()
    return _contract(row)


def list_leases(
    session: Session, tenant_id: str | None = None, gpu_uuid: str | None = None, active_at_ms: int | None = None
) -> list[Lease]:
    """Leases by GPU and start, optionally one tenant's, one GPU's, or those covering an instant."""
    query = select(models.Lease)
    if tenant_id is not None:
        query = query.where(models.Lease.tenant_id == tenant_id)
    if gpu_uuid is not None:
        query = query.where(models.Lease.gpu_uuid == gpu_uuid)
    if active_at_ms is not None:
        query = query.where(
            models.Lease.start_ms <= active_at_ms,
            or_(models.Lease.end_ms.is_(None), models.Lease.end_ms > active_at_ms),
        )
    rows = session.scalars(query.order_by(models.Lease.gpu_uuid, models.Lease.start_ms, models.Lease.lease_id))
    return [_contract(row) for row in rows]


def leases_overlapping(
    session: Session, start_ms: int, end_ms: int, tenant_ids: Iterable[str] | None = None
) -> list[Lease]:
    """The leases that overlap [start_ms, end_ms), optionally of some tenants only: what billing hands
    the usage reader so that time the worker metered as idle inside them bills to them."""
    query = select(models.Lease).where(
        models.Lease.start_ms < end_ms, or_(models.Lease.end_ms.is_(None), models.Lease.end_ms > start_ms)
    )
    rows = list(session.scalars(query.order_by(models.Lease.gpu_uuid, models.Lease.start_ms)))
    wanted = None if tenant_ids is None else set(tenant_ids)
    return [_contract(row) for row in rows if wanted is None or row.tenant_id in wanted]


class _GpuTimeline:
    """One GPU's leases during an import, sorted by start, for neighbour overlap checks."""

    def __init__(self, leases: Iterable[Lease]) -> None:
        self.leases = sorted(leases, key=lambda lease: lease.start_ms)
        self.starts = [lease.start_ms for lease in self.leases]

    def overlapping(self, lease: Lease) -> Lease | None:
        # the held leases never overlap, so only the neighbours of the new start can
        index = bisect_left(self.starts, lease.start_ms)
        if index > 0:
            before = self.leases[index - 1]
            if before.end_ms is None or before.end_ms > lease.start_ms:
                return before
        if index < len(self.leases):
            after = self.leases[index]
            if lease.end_ms is None or after.start_ms < lease.end_ms:
                return after
        return None

    def add(self, lease: Lease) -> None:
        index = bisect_left(self.starts, lease.start_ms)
        self.starts.insert(index, lease.start_ms)
        self.leases.insert(index, lease)


def import_leases(session: Session, rows: Sequence[LeaseRow], actor: str | None = None) -> ImportResult:
    """Import lease rows all or nothing: the first bad row (in file order) raises its error,
    prefixed with `file:line:`, and nothing is written. Rows that match a held lease (same id
    and fields) are skipped, so importing a file again changes nothing."""
    asked: list[tuple[LeaseRow, Lease]] = []
    for row in rows:
        lease = Lease(
            row.lease_id or default_lease_id(row.tenant_id, row.gpu_uuid, row.start_ms),
            row.tenant_id,
            row.gpu_uuid,
            row.start_ms,
            row.end_ms,
            row.plan or DEFAULT_PLAN,
        )
        asked.append((row, lease))
    gpus = sorted({lease.gpu_uuid for _, lease in asked})
    lock_gpus(session, gpus)
    tenant_ids = sorted({lease.tenant_id for _, lease in asked})
    known_tenants: set[str] = set()
    for chunk in _chunks(tenant_ids):
        known_tenants.update(session.scalars(select(models.Tenant.tenant_id).where(models.Tenant.tenant_id.in_(chunk))))
    ids = sorted({lease.lease_id for _, lease in asked})
    held: dict[str, Lease] = {}
    for chunk in _chunks(ids):
        held.update(
            (r.lease_id, _contract(r))
            for r in session.scalars(select(models.Lease).where(models.Lease.lease_id.in_(chunk)))
        )
    timelines: dict[str, _GpuTimeline] = {}
    for chunk in _chunks(gpus):
        by_gpu: dict[str, list[Lease]] = {gpu: [] for gpu in chunk}
        for r in session.scalars(select(models.Lease).where(models.Lease.gpu_uuid.in_(chunk))):
            by_gpu[r.gpu_uuid].append(_contract(r))
        timelines.update((gpu, _GpuTimeline(leases)) for gpu, leases in by_gpu.items())

    offers = OfferIndex(session)
    offer_of: dict[str, str | None] = {}
    created: list[tuple[LeaseRow, Lease]] = []
    first_line: dict[str, int] = {}
    unchanged = 0
    for row, lease in asked:
        try:
            _check_fields(lease)
            if lease.tenant_id not in known_tenants:
                raise UnknownTenant(f"unknown tenant {lease.tenant_id!r}")
            if lease.lease_id in held:
                if held[lease.lease_id] != lease:
                    earlier = first_line.get(lease.lease_id)
                    if earlier is not None:
                        raise LeaseIdConflict(
                            f"lease {lease.lease_id} appears at line {earlier} with different fields: "
                            f"{_differences(held[lease.lease_id], lease)}"
                        )
                    raise _id_conflict(held[lease.lease_id], lease)
                unchanged += 1
                continue
            timeline = timelines[lease.gpu_uuid]
            other = timeline.overlapping(lease)
            if other is not None:
                raise _overlap(lease, other)
            offer_of[lease.lease_id] = offers.offer_for(lease)
        except LeaseError as exc:
            raise type(exc)(f"{row.where}: {exc}") from None
        timeline.add(lease)
        held[lease.lease_id] = lease
        first_line[lease.lease_id] = row.line
        created.append((row, lease))

    changed = sorted({lease.gpu_uuid for _, lease in created})
    if not created:
        return ImportResult((), unchanged, ())
    who = actor or default_actor()
    stamp = now_ms()
    with session.begin_nested():  # nothing of a failed write stays, even if the caller carries on
        session.add_all(
            models.Lease(
                lease_id=lease.lease_id,
                tenant_id=lease.tenant_id,
                gpu_uuid=lease.gpu_uuid,
                plan=lease.plan,
                start_ms=lease.start_ms,
                end_ms=lease.end_ms,
                created_ms=stamp,
                offer_id=offer_of[lease.lease_id],
            )
            for _, lease in created
        )
        for row, lease in created:
            audit(
                session,
                who,
                "lease.import",
                "lease",
                lease.lease_id,
                tenant_id=lease.tenant_id,
                gpu_uuid=lease.gpu_uuid,
                start_ms=lease.start_ms,
                end_ms=lease.end_ms,
                plan=lease.plan,
                source=row.where,
            )
        add_outbox(session, changed)
        session.flush()
    return ImportResult(tuple(lease.lease_id for _, lease in created), unchanged, tuple(changed))
