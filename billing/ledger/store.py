"""Adapter: the commercial facts in SQL — tenants, rate card versions, contracts, credits.

Every change is one transaction with an audit entry. Functions take the caller's session
so that the CLI, the tests and the later HTTP API share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.common.instants import ms_to_iso as iso
from billing.ledger.db import audit, now_ms
from billing.ledger.errors import Conflict, LedgerError, NotFound
from billing.ledger.models import Contract, Credit, CreditDrawdown, Invoice, RateCard, Tenant, UtilityTariff
from billing.ledger.tenant_rules import check_tenant_id, check_tenant_name, check_timezone
from billing.pricing.money import minor_units
from billing.pricing.ratecards import RateCardVersion
from billing.pricing.segments import CardSpan
from billing.pricing.segments import card_spans as versions_to_spans
from billing.pricing.tariffs import Tariff, tariff_from_dict


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"unknown tenant {tenant_id!r} (add it with: wattmeter-billing tenants add {tenant_id} ...)")
    return tenant


STRIPE_MODES = ("invoices", "meters")


def upsert_tenant(
    session: Session,
    actor: str,
    tenant_id: str,
    *,
    name: str | None = None,
    currency: str = "USD",
    timezone: str = "UTC",
    tax_jurisdiction: str = "*",
    contact_email: str | None = None,
    stripe_mode: str | None = None,
    internal: bool | None = None,
) -> Tenant:
    """Add a tenant, or change one; the currency of a tenant with invoices never changes.
    `stripe_mode`: "invoices" (wattmeter's invoices are pushed to Stripe, the default) or "meters"
    (usage goes to Stripe Billing meters); None keeps the tenant's. The id (of a new tenant), the
    name (when given) and the time zone follow billing.ledger.tenant_rules; `name` None keeps the
    tenant's, or is the id for a new one. `internal` True: the owner's own use, metered and never
    invoiced (None keeps the tenant's; a new tenant is not internal)."""
    currency = currency.upper()
    minor_units(currency)  # refuses an unknown currency
    check_timezone(timezone)
    if name is not None:
        name = check_tenant_name(name)
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        check_tenant_id(tenant_id)  # a tenant held from before the rules can still be changed
    fields = {
        "name": name if name is not None else (tenant.name if tenant else tenant_id),
        "currency": currency,
        "timezone": timezone,
        "tax_jurisdiction": tax_jurisdiction,
        "contact_email": contact_email if contact_email is not None else (tenant.contact_email if tenant else None),
        "stripe_mode": stripe_mode or (tenant.stripe_mode if tenant else "invoices"),
        "internal": internal if internal is not None else (tenant.internal if tenant else False),
    }
    if fields["stripe_mode"] not in STRIPE_MODES:
        raise LedgerError(f"stripe mode must be one of {', '.join(STRIPE_MODES)}, not {stripe_mode!r}")
    if tenant is None:
        tenant = Tenant(tenant_id=tenant_id, created_ms=now_ms(), **fields)
        session.add(tenant)
        audit(session, actor, "tenant.add", "tenant", tenant_id, **fields)
        return tenant
    changed = {k: v for k, v in fields.items() if getattr(tenant, k) != v}
    if not changed:
        return tenant
    if "currency" in changed and session.scalar(select(func.count()).where(Invoice.tenant_id == tenant_id)):
        raise Conflict(f"tenant {tenant_id!r} has invoices in {tenant.currency}: its currency cannot change")
    for key, value in changed.items():
        setattr(tenant, key, value)
    audit(session, actor, "tenant.change", "tenant", tenant_id, **changed)
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.tenant_id)))


VersionRow = TypeVar("VersionRow", RateCard, UtilityTariff)


def _store_version(
    session: Session,
    actor: str,
    model: type[VersionRow],
    what: str,
    document: RateCardVersion | Tariff,
    **extra: Any,
) -> tuple[VersionRow, bool]:
    """Store a versioned document (a rate card, a tariff): the same content again is a no-op,
    different content under an existing (name, version) is refused: versions are never edited, a
    change is a new version."""
    name, version = document.name, document.version
    existing = session.scalar(select(model).where(model.name == name, model.version == version))
    digest = document.content_hash()
    if existing is not None:
        if existing.content_hash != digest:
            raise Conflict(
                f"{what} {name} version {version} exists with other content: "
                "give the change a new version and an effective_from"
            )
        return existing, False
    row = model(
        name=name,
        version=version,
        effective_from_ms=document.effective_from_ms,
        currency=document.currency,
        content_hash=digest,
        body=document.to_dict(),
        created_ms=now_ms(),
        **extra,
    )
    session.add(row)
    kind = what.replace(" ", "_")
    audit(session, actor, f"{kind}.add", kind, f"{name}@{version}", content_hash=digest)
    return row, True


def store_rate_card(session: Session, actor: str, card: RateCardVersion, source: str = "") -> tuple[RateCard, bool]:
    """Store a rate card version (`_store_version`'s rules)."""
    return _store_version(session, actor, RateCard, "rate card", card, source=source)


def store_tariff(session: Session, actor: str, tariff: Tariff) -> tuple[UtilityTariff, bool]:
    """Store a utility tariff version, by the rate cards' rules (`_store_version`)."""
    return _store_version(session, actor, UtilityTariff, "tariff", tariff)


def tariff_versions(session: Session, name: str | None = None) -> list[Tariff]:
    """Every version of the tariff `name` (default: every tariff's), oldest first."""
    query = select(UtilityTariff).order_by(UtilityTariff.effective_from_ms, UtilityTariff.version)
    if name is not None:
        query = query.where(UtilityTariff.name == name)
    return [tariff_from_dict(row.body, f"tariff {row.name} v{row.version}") for row in session.scalars(query)]


def rate_card_versions(session: Session, name: str) -> list[RateCardVersion]:
    rows = session.scalars(select(RateCard).where(RateCard.name == name).order_by(RateCard.effective_from_ms))
    return [RateCardVersion.from_dict(row.body) for row in rows]


def list_rate_cards(session: Session) -> list[RateCard]:
    return list(session.scalars(select(RateCard).order_by(RateCard.name, RateCard.version)))


def add_contract(
    session: Session, actor: str, tenant_id: str, rate_card: str, start_ms: int, end_ms: int | None = None
) -> Contract:
    """Put a tenant on a rate card from `start_ms`; an open contract before it ends there."""
    tenant = get_tenant(session, tenant_id)
    versions = rate_card_versions(session, rate_card)
    if not versions:
        raise NotFound(f"unknown rate card {rate_card!r} (load it with: wattmeter-billing ratecards load FILE)")
    if any(v.currency != tenant.currency for v in versions):
        raise Conflict(f"rate card {rate_card!r} is not in {tenant.currency}, the currency of tenant {tenant_id!r}")
    if end_ms is not None and end_ms <= start_ms:
        raise LedgerError("a contract must end after it starts")
    for other in session.scalars(select(Contract).where(Contract.tenant_id == tenant_id)):
        if other.start_ms == start_ms and other.rate_card == rate_card and other.end_ms == end_ms:
            return other  # the same contract again: idempotent
        if other.end_ms is None and other.start_ms < start_ms:
            other.end_ms = start_ms
            audit(session, actor, "contract.end", "contract", str(other.id), end_ms=start_ms)
        elif other.start_ms < (end_ms if end_ms is not None else 2**62) and start_ms < (other.end_ms or 2**62):
            raise Conflict(
                f"contract {other.id} ({other.rate_card}) already covers part of that time for {tenant_id!r}"
            )
    contract = Contract(tenant_id=tenant_id, rate_card=rate_card, start_ms=start_ms, end_ms=end_ms, created_ms=now_ms())
    session.add(contract)
    session.flush()
    audit(
        session,
        actor,
        "contract.add",
        "contract",
        str(contract.id),
        tenant_id=tenant_id,
        rate_card=rate_card,
        start_ms=start_ms,
        end_ms=end_ms,
    )
    return contract


def card_spans(session: Session, tenant_id: str, start_ms: int, end_ms: int) -> list[CardSpan]:
    """The rate card version in force for a tenant over [start, end): its contracts, each cut at
    its card's version changes. Contracts that leave a gap inside the covered time are refused."""
    contracts = session.scalars(
        select(Contract).where(Contract.tenant_id == tenant_id).order_by(Contract.start_ms)
    ).all()
    spans: list[CardSpan] = []
    for contract in contracts:
        lo = max(start_ms, contract.start_ms)
        hi = min(end_ms, contract.end_ms if contract.end_ms is not None else end_ms)
        if lo >= hi:
            continue
        if spans and spans[-1].end_ms != lo:
            raise LedgerError(
                f"tenant {tenant_id!r} has no contract from {iso(spans[-1].end_ms)} to {iso(lo)}: "
                "usage there could not be priced"
            )
        spans += versions_to_spans(rate_card_versions(session, contract.rate_card), lo, hi)
    return spans


@dataclass(frozen=True)
class CreditBalance:
    credit_id: str
    remaining: Decimal
    granted_ms: int
    expires_ms: int | None


def grant_credit(
    session: Session,
    actor: str,
    tenant_id: str,
    credit_id: str,
    amount: Decimal,
    expires_ms: int | None,
    note: str = "",
    granted_ms: int | None = None,
) -> Credit:
    tenant = get_tenant(session, tenant_id)
    if amount <= 0:
        raise LedgerError("a credit grant must be a positive amount")
    existing = session.get(Credit, credit_id)
    if existing is not None:
        if existing.tenant_id == tenant_id and existing.amount == amount and existing.expires_ms == expires_ms:
            return existing
        raise Conflict(f"credit {credit_id!r} exists with other terms")
    credit = Credit(
        credit_id=credit_id,
        tenant_id=tenant_id,
        currency=tenant.currency,
        amount=amount,
        granted_ms=granted_ms if granted_ms is not None else now_ms(),
        expires_ms=expires_ms,
        note=note,
    )
    session.add(credit)
    audit(
        session,
        actor,
        "credit.grant",
        "credit",
        credit_id,
        tenant_id=tenant_id,
        amount=str(amount),
        expires_ms=expires_ms,
    )
    return credit


def credit_balances(session: Session, tenant_id: str, exclude_invoice: int | None = None) -> list[CreditBalance]:
    """Each grant's remaining amount after what invoices that are not void drew from it."""
    drawn = (
        select(CreditDrawdown.credit_id, CreditDrawdown.amount)
        .join(Invoice, Invoice.id == CreditDrawdown.invoice_id)
        .where(Invoice.status != "void")
    )
    if exclude_invoice is not None:
        drawn = drawn.where(Invoice.id != exclude_invoice)
    used: dict[str, Decimal] = {}
    for credit_id, amount in session.execute(drawn):
        used[credit_id] = used.get(credit_id, Decimal(0)) + amount
    balances = []
    for credit in session.scalars(select(Credit).where(Credit.tenant_id == tenant_id).order_by(Credit.credit_id)):
        remaining = credit.amount - used.get(credit.credit_id, Decimal(0))
        if remaining > 0:
            balances.append(CreditBalance(credit.credit_id, remaining, credit.granted_ms, credit.expires_ms))
    return balances
