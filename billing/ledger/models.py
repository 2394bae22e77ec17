"""The billing database: SQLAlchemy 2 typed ORM models (the schema itself is in Alembic migrations).

Units follow the contracts: instants are integer ms since the epoch (UTC), usage is integer
ms and mJ. Money and prices are `Decimal` through `ExactDecimal`, never a float: unconstrained NUMERIC on
PostgreSQL, exact decimal text on SQLite (whose NUMERIC affinity would round through a
double).

Finalized invoices never change: the ORM refuses it (`billing.ledger.immutability`) and so
do database triggers (migration 0001), so that no path around the ORM can either.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator, TypeEngine

INVOICE_DRAFT = "draft"
INVOICE_FINALIZED = "finalized"
INVOICE_VOID = "void"


class ExactDecimal(TypeDecorator[Decimal]):
    """A Decimal column that is exact on every backend and refuses floats."""

    impl = Numeric()
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(64))
        # unconstrained NUMERIC keeps each value's own scale: 3.00 comes back as 3.00, not 3.000000000000
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"money and prices must be Decimal, not {type(value).__name__} ({value!r})")
        if not value.is_finite():
            raise TypeError(f"money must be finite, got {value}")
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(value)


class Base(DeclarativeBase):
    type_annotation_map = {Decimal: ExactDecimal(), dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    currency: Mapped[str] = mapped_column(String(3))
    timezone: Mapped[str] = mapped_column(String(64))
    tax_jurisdiction: Mapped[str] = mapped_column(String(32))
    contact_email: Mapped[str | None] = mapped_column(String(320))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    # how Stripe hears of this tenant's usage: "invoices" (wattmeter's invoices are pushed) or
    # "meters" (usage is reported to Stripe Billing meters and Stripe prices it)
    stripe_mode: Mapped[str] = mapped_column(String(16), default="invoices", server_default="invoices")
    # the owner's own use (its training): metered like any tenant, never invoiced nor pushed to Stripe
    internal: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class VersionedDocument:
    """The columns of a versioned document (a rate card, a utility tariff): one (name, version) each,
    its canonical JSON `body` and that JSON's sha256 (billing.ledger.store._store_version)."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    effective_from_ms: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    content_hash: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class UtilityTariff(VersionedDocument, Base):
    """One version of the operator's utility tariff: the canonical JSON of `billing.pricing.tariffs.Tariff`."""

    __tablename__ = "utility_tariffs"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_utility_tariff_version"),)


class RateCard(VersionedDocument, Base):
    """One version of a rate card: the canonical JSON of `billing.pricing.ratecards.RateCardVersion`."""

    __tablename__ = "rate_cards"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_rate_card_version"),)

    source: Mapped[str] = mapped_column(Text, default="")


class Contract(Base):
    """Which rate card applies to a tenant from when (to when, exclusive; None: open)."""

    __tablename__ = "contracts"
    __table_args__ = (Index("ix_contracts_tenant", "tenant_id", "start_ms"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    rate_card: Mapped[str] = mapped_column(String(128))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int | None] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class Lease(Base):
    """The system of record of leases; published to `gpu.leases` through `LeaseOutbox`."""

    __tablename__ = "leases"
    __table_args__ = (Index("ix_leases_gpu_start", "gpu_uuid", "start_ms"), Index("ix_leases_tenant", "tenant_id"))

    lease_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    gpu_uuid: Mapped[str] = mapped_column(String(128))
    plan: Mapped[str] = mapped_column(String(32))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int | None] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    # who set end_ms: "tenant" (its own end, billed as always) or "owner" (a preemption); None while open
    ended_by: Mapped[str | None] = mapped_column(String(16))
    noticed_ms: Mapped[int | None] = mapped_column(BigInteger)  # when the owner's preemption notice was given
    offer_id: Mapped[str | None] = mapped_column(String(128))  # the capacity offer it was sold in


class CapacityOffer(Base):
    """GPUs the owner offers for rent over [start_ms, end_ms), on some plans, taken back on `notice_ms` notice."""

    __tablename__ = "capacity_offers"

    offer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    gpus: Mapped[list[Any]] = mapped_column(JSON)  # GPU uuids (a pool label is resolved when the offer opens)
    pool: Mapped[str | None] = mapped_column(String(128))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    plans: Mapped[list[Any]] = mapped_column(JSON)
    notice_ms: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # open | closed
    created_ms: Mapped[int] = mapped_column(BigInteger)
    closed_ms: Mapped[int | None] = mapped_column(BigInteger)


class GpuPoolMember(Base):
    """A GPU's pool label, so that an offer can name a pool instead of listing uuids."""

    __tablename__ = "gpu_pool_members"

    pool: Mapped[str] = mapped_column(String(128), primary_key=True)
    gpu_uuid: Mapped[str] = mapped_column(String(128), primary_key=True)


class MaintenanceWindow(Base):
    """An outage the owner announced ahead: leased time in it does not count against an SLA."""

    __tablename__ = "maintenance_windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gpus: Mapped[list[Any]] = mapped_column(JSON)
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    announced_ms: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(Text, default="")


class WebhookEndpoint(Base):
    """Where a tenant's notices go, and the secret they are signed with."""

    __tablename__ = "webhook_endpoints"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))
    created_ms: Mapped[int] = mapped_column(BigInteger)


class TenantEvent(Base):
    """An event for a tenant (a preemption notice, a budget alert): written in the transaction that
    causes it, then sent to Kafka (`kafka_published_ms`) and to the tenant's webhook (`WebhookDelivery`)."""

    __tablename__ = "tenant_events"
    __table_args__ = (Index("ix_tenant_events_kafka", "kafka_published_ms"),)

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    key: Mapped[str] = mapped_column(String(128))  # the compacted topic's key (a lease id)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    kafka_published_ms: Mapped[int | None] = mapped_column(BigInteger)


class Budget(Base):
    """A spend budget of a tenant for each period, set by the tenant itself or by finance (each its
    own), with the percentages that alert and where the alerts go (billing.spend.budgets)."""

    __tablename__ = "budgets"

    budget_id: Mapped[str] = mapped_column(String(160), primary_key=True)  # "<tenant>/<owner>"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), index=True)
    owner: Mapped[str] = mapped_column(String(16))  # tenant | finance
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    thresholds: Mapped[list[int]] = mapped_column(JSON)  # percentages, ascending
    webhook_url: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(String(128))
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """One event's delivery to its tenant's endpoint (or a budget's own): pending until acknowledged
    (2xx), retried with backoff."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_ms"),)

    event_id: Mapped[str] = mapped_column(ForeignKey("tenant_events.event_id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed (gave up: shown, retried by hand)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_ms: Mapped[int] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    delivered_ms: Mapped[int | None] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    budget_id: Mapped[str | None] = mapped_column(ForeignKey("budgets.budget_id"))  # set: the budget's URL and secret


class LeaseOutbox(Base):
    """A GPU whose timeline changed in the same transaction; the publisher sends its current
    timeline to `gpu.leases` and then stamps `published_ms`."""

    __tablename__ = "lease_outbox"
    __table_args__ = (Index("ix_lease_outbox_pending", "published_ms", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gpu_uuid: Mapped[str] = mapped_column(String(128))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    published_ms: Mapped[int | None] = mapped_column(BigInteger)


class Credit(Base):
    """A prepaid credit grant, drawn down earliest expiry first."""

    __tablename__ = "credits"

    credit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal]
    granted_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(Text, default="")


class CreditDrawdown(Base):
    """What an invoice drew from a credit grant (a voided invoice's drawdowns are released)."""

    __tablename__ = "credit_drawdowns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    credit_id: Mapped[str] = mapped_column(ForeignKey("credits.credit_id"))
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"))
    amount: Mapped[Decimal]


class Invoice(Base):
    """One invoice per tenant per period (unique among invoices that are not void)."""

    __tablename__ = "invoices"
    __table_args__ = (
        Index(
            "uq_invoice_tenant_period",
            "tenant_id",
            "period",
            unique=True,
            sqlite_where=text("status <> 'void'"),
            postgresql_where=text("status <> 'void'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    period: Mapped[str] = mapped_column(String(16))  # "2026-11": a calendar month in the tenant's time zone
    period_start_ms: Mapped[int] = mapped_column(BigInteger)
    period_end_ms: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=INVOICE_DRAFT)
    number: Mapped[str | None] = mapped_column(String(32), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    subtotal: Mapped[Decimal]
    tax: Mapped[Decimal]
    total: Mapped[Decimal]
    credits_applied: Mapped[Decimal]
    amount_due: Mapped[Decimal]
    content_hash: Mapped[str] = mapped_column(String(64))
    usage_cutoff: Mapped[dict[str, Any]] = mapped_column(JSON)  # {usage.records partition: next offset}
    rated_ms: Mapped[int] = mapped_column(BigInteger)
    finalized_ms: Mapped[int | None] = mapped_column(BigInteger)
    voided_ms: Mapped[int | None] = mapped_column(BigInteger)
    void_reason: Mapped[str | None] = mapped_column(Text)

    lines: Mapped[list[InvoiceLineRow]] = relationship(
        back_populates="invoice", order_by="InvoiceLineRow.position", cascade="all, delete-orphan"
    )


class InvoiceLineRow(Base):
    __tablename__ = "invoice_lines"
    __table_args__ = (UniqueConstraint("invoice_id", "position", name="uq_invoice_line_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text)
    service_start_ms: Mapped[int] = mapped_column(BigInteger)
    service_end_ms: Mapped[int] = mapped_column(BigInteger)
    service_period: Mapped[str] = mapped_column(String(16))
    correction: Mapped[bool] = mapped_column(Boolean, default=False)
    card_name: Mapped[str] = mapped_column(String(128), default="")
    card_version: Mapped[int] = mapped_column(Integer, default=0)
    plan: Mapped[str] = mapped_column(String(32), default="")
    model: Mapped[str] = mapped_column(String(128), default="")
    tou_period: Mapped[str] = mapped_column(String(32), default="")
    tier: Mapped[int | None] = mapped_column(Integer)
    quantity_base: Mapped[int] = mapped_column(BigInteger, default=0)
    base_unit: Mapped[str] = mapped_column(String(8), default="")
    quantity: Mapped[Decimal]
    unit: Mapped[str] = mapped_column(String(16), default="")
    unit_price: Mapped[Decimal]
    amount: Mapped[Decimal]
    usage_query: Mapped[dict[str, Any]] = mapped_column(JSON)  # what `explain` re-runs over the Parquet

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class CreditNote(Base):
    """Lowers what a tenant owes for an issued invoice; numbered in its own gap-free sequence."""

    __tablename__ = "credit_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal]  # positive: what is credited
    reason: Mapped[str] = mapped_column(Text)
    lines: Mapped[list[Any]] = mapped_column(JSON)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class UsageConsumption(Base):
    """Which usage an invoice (or credit note) counted: a tenant's service period, over the
    Parquet files whose usage.records offsets lie in [cutoff_from, cutoff_to) per partition.

    For one tenant and service period the consumptions chain (each starts where the last
    ended), so every usage record counts on exactly one invoice.
    """

    __tablename__ = "usage_consumption"
    __table_args__ = (Index("ix_consumption_tenant_period", "tenant_id", "service_period"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    service_period: Mapped[str] = mapped_column(String(16))
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    credit_note_id: Mapped[int | None] = mapped_column(ForeignKey("credit_notes.id"))
    cutoff_from: Mapped[dict[str, Any]] = mapped_column(JSON)
    cutoff_to: Mapped[dict[str, Any]] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # False once its invoice is voided


class NumberSequence(Base):
    """Gap-free numbering: the next number is taken in the transaction that finalizes."""

    __tablename__ = "number_sequences"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_value: Mapped[int] = mapped_column(BigInteger)


class AuditEntry(Base):
    """Append-only (triggers refuse UPDATE and DELETE): who changed what, when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class StripeInvoiceSync(Base):
    """Where one issued wattmeter invoice stands in Stripe: the ids Stripe gave each object, the
    step reached, the last failure and its cause, and the payment state Stripe reported back.
    Kept apart from `invoices`, which never change once issued."""

    __tablename__ = "stripe_invoice_syncs"

    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    mode: Mapped[str] = mapped_column(String(16))  # "invoices" | "meters"
    # pending -> customer -> items -> invoice -> finalized; then voided (a voided wattmeter invoice)
    state: Mapped[str] = mapped_column(String(16))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64))
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    stripe_items: Mapped[dict[str, Any]] = mapped_column(JSON)  # line position -> invoice item id (or meter event id)
    payment_status: Mapped[str | None] = mapped_column(String(16))  # open | paid | failed | void | uncollectible
    amount_paid: Mapped[Decimal | None]
    status_event_created: Mapped[int | None] = mapped_column(BigInteger)  # Stripe event time (s) behind payment_status
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_ms: Mapped[int | None] = mapped_column(BigInteger)
    pushed_ms: Mapped[int | None] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class StripeCreditNoteSync(Base):
    """Where one wattmeter credit note stands in Stripe."""

    __tablename__ = "stripe_credit_note_syncs"

    credit_note_id: Mapped[int] = mapped_column(ForeignKey("credit_notes.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # pending | created
    stripe_credit_note_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class StripeEvent(Base):
    """Every Stripe event applied once: a webhook delivered twice, or seen again by the poll, is a no-op."""

    __tablename__ = "stripe_events"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    created: Mapped[int] = mapped_column(BigInteger)  # Stripe's event time, seconds
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # webhook | poll
    outcome: Mapped[str] = mapped_column(String(64))
    received_ms: Mapped[int] = mapped_column(BigInteger)


class SyncCursor(Base):
    """A named resume point (the events poll's last seen event time)."""

    __tablename__ = "sync_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class MonthClose(Base):
    """A period's close: the steps done so far, so that a run after a crash carries on."""

    __tablename__ = "month_closes"

    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    # the last step completed: started | rated | reviewed | finalized | pushed | reconciled
    step: Mapped[str] = mapped_column(String(16))
    started_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(128))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)


class ApiKey(Base):
    """An API key: only a hash of its secret is stored. Roles: tenant (sees only `tenant_id`),
    finance (every tenant, read), operator (the fleet, and manages leases)."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the public part of the key
    secret_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the secret part
    role: Mapped[str] = mapped_column(String(16))  # tenant | finance | operator
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.tenant_id"))
    label: Mapped[str] = mapped_column(String(128), default="")
    created_ms: Mapped[int] = mapped_column(BigInteger)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger)


class UsageHourly(Base):
    """Usage rolled up per (tenant, GPU, plan, hour): what the API, the portal, the statements and the
    yield report read, instead of a month of minute records. Idle time has tenant_id "" (the fleet's
    unleased GPU time). Rebuilt per period from the Parquet by `wattmeter-billing rollup`."""

    __tablename__ = "usage_hourly"
    __table_args__ = (
        UniqueConstraint("tenant_id", "gpu_uuid", "plan", "hour_start_ms", name="uq_usage_hourly"),
        Index("ix_usage_hourly_tenant_hour", "tenant_id", "hour_start_ms"),
        Index("ix_usage_hourly_hour", "hour_start_ms"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    gpu_uuid: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    plan: Mapped[str] = mapped_column(String(32))
    hour_start_ms: Mapped[int] = mapped_column(BigInteger)
    allocated_gpu_ms: Mapped[int] = mapped_column(BigInteger)
    busy_gpu_ms: Mapped[int] = mapped_column(BigInteger)
    energy_mj: Mapped[int] = mapped_column(BigInteger)
    records: Mapped[int] = mapped_column(Integer)


class RollupRun(Base):
    """When each period's hourly rollup was last rebuilt, and from which sink cut-off."""

    __tablename__ = "rollup_runs"

    period: Mapped[str] = mapped_column(String(16), primary_key=True)  # a UTC month, YYYY-MM
    cutoff: Mapped[dict[str, Any]] = mapped_column(JSON)
    rows: Mapped[int] = mapped_column(Integer)
    built_ms: Mapped[int] = mapped_column(BigInteger)
