"""Capacity offers and preemption on a real database (SQLite and PostgreSQL): leases on the valley
plans only inside an open offer, the owner's end recorded with its notice, the notice written as a
tenant event and a webhook delivery, and the CLI's one-line refusals."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from billing.cli import main as billing_main
from billing.leases import offers
from billing.leases.errors import InvalidOffer, OfferConflict, OutsideOffer
from billing.leases.importers import LeaseRow
from billing.leases.service import end_lease, import_leases, open_lease
from billing.ledger import models
from billing.ledger.db import Ledger
from billing.market import maintenance, webhooks
from billing.market.errors import CannotPreempt, InvalidWindow
from billing.market.notices import PREEMPTION_NOTICE
from billing.market.preemption import preempt
from schemas.leases import Lease
from tests.billing.leases.test_leases import add_tenant
from tests.support.helpers import T0

HOUR = 3_600_000
NOTICE_MS = 120_000


@pytest.fixture
def ledger(billing_db_url: str):
    ledger = Ledger(billing_db_url)
    with ledger.transaction() as session:
        for tenant in ("acme", "globex", "owner"):
            add_tenant(session, tenant)
    yield ledger
    ledger.dispose()


def open_weekend(session, gpus=("gpu-1", "gpu-2"), **kw) -> offers.Offer:
    return offers.open_offer(
        session, "weekend", start_ms=T0, end_ms=T0 + 60 * HOUR, notice_ms=NOTICE_MS, gpus=gpus, **kw
    )


def test_valley_leases_need_an_open_offer_that_covers_them(ledger: Ledger) -> None:
    with ledger.transaction() as session:
        with pytest.raises(OutsideOffer, match=r"^lease v-1 on the valley plan \(GPU gpu-1, from .*no open capacity"):
            open_lease(session, "acme", "gpu-1", T0, T0 + HOUR, plan="valley", lease_id="v-1")
        open_weekend(session)
        sold = open_lease(session, "acme", "gpu-1", T0, T0 + HOUR, plan="valley", lease_id="v-1")
        assert sold == Lease("v-1", "acme", "gpu-1", T0, T0 + HOUR, "valley")
        assert session.get(models.Lease, "v-1").offer_id == "weekend"
        # on_demand is sold outside offers; a GPU, plan or time outside the offer is refused
        assert open_lease(session, "acme", "gpu-3", T0, plan="on_demand", lease_id="od").plan == "on_demand"
        with pytest.raises(OutsideOffer):
            open_lease(session, "acme", "gpu-3", T0, T0 + HOUR, plan="interruptible", lease_id="x-gpu")
        with pytest.raises(OutsideOffer):
            open_lease(session, "acme", "gpu-2", T0 + 59 * HOUR, T0 + 61 * HOUR, plan="valley", lease_id="x-late")
        offers.close_offer(session, "weekend")
        with pytest.raises(OutsideOffer):
            open_lease(session, "globex", "gpu-2", T0, T0 + HOUR, plan="valley", lease_id="x-closed")
        assert session.get(models.Lease, "v-1").end_ms == T0 + HOUR  # sold leases run on


def test_import_refuses_a_valley_row_outside_offers_naming_the_row(ledger: Ledger) -> None:
    rows = [
        LeaseRow("acme", "gpu-1", T0, T0 + HOUR, "valley", "i-1", "a.csv", 2),
        LeaseRow("acme", "gpu-9", T0, T0 + HOUR, "valley", "i-2", "a.csv", 3),
    ]
    with ledger.transaction() as session:
        open_weekend(session)
    with pytest.raises(OutsideOffer, match=r"^a\.csv:3: lease i-2 on the valley plan"):
        with ledger.transaction() as session:
            import_leases(session, rows)
    with ledger.transaction() as session:
        assert session.scalar(select(func.count()).select_from(models.Lease)) == 0  # nothing half-written
        assert import_leases(session, rows[:1]).created == ("i-1",)
        assert session.get(models.Lease, "i-1").offer_id == "weekend"


def test_offers_are_idempotent_and_refuse_conflicts_and_bad_fields(ledger: Ledger) -> None:
    with ledger.transaction() as session:
        first = open_weekend(session)
        assert open_weekend(session) == first
        with pytest.raises(OfferConflict):
            open_weekend(session, gpus=("gpu-1",))
        with pytest.raises(InvalidOffer, match="not both and not neither"):
            offers.open_offer(session, "o2", start_ms=T0, end_ms=T0 + HOUR, notice_ms=0)
        with pytest.raises(InvalidOffer, match="is not after its start"):
            offers.open_offer(session, "o2", start_ms=T0, end_ms=T0, notice_ms=0, gpus=["g"])
        with pytest.raises(InvalidOffer, match="has no GPUs"):
            offers.open_offer(session, "o2", start_ms=T0, end_ms=T0 + HOUR, notice_ms=0, pool="empty")
        assert offers.add_pool_members(session, "rack-7", ["gpu-7", "gpu-8", "gpu-7"]) == 2
        pooled = offers.open_offer(
            session, "rack", start_ms=T0, end_ms=T0 + HOUR, notice_ms=30_000, pool="rack-7", plans=["valley"]
        )
        assert pooled.gpus == ("gpu-7", "gpu-8")
        with pytest.raises(OutsideOffer):  # the offer sells valley only
            open_lease(session, "acme", "gpu-7", T0, T0 + HOUR, plan="interruptible", lease_id="x-plan")
        offers.add_pool_members(session, "rack-7", ["gpu-9"])  # a later member is not in the offer
        assert offers.get_offer(session, "rack").gpus == ("gpu-7", "gpu-8")
        assert [o.offer_id for o in offers.list_offers(session, offers.OPEN)] == ["rack", "weekend"]


def test_preemption_records_the_owner_the_notice_and_the_event(ledger: Ledger) -> None:
    with ledger.transaction() as session:
        open_weekend(session)
        webhooks.set_endpoint(session, "acme", "http://127.0.0.1:9/hook", secret="whsec_test")
        open_lease(session, "acme", "gpu-1", T0, plan="valley", lease_id="v-1")
        open_lease(session, "globex", "gpu-2", T0, T0 + 10 * HOUR, plan="interruptible", lease_id="v-2")
    noticed = T0 + 40 * 60_000
    with ledger.transaction() as session:
        done = preempt(session, offer_id="weekend", noticed_ms=noticed)
    assert [(p.lease_id, p.noticed_ms, p.ends_ms, p.notice_ms) for p in done] == [
        ("v-1", noticed, noticed + NOTICE_MS, NOTICE_MS),
        ("v-2", noticed, noticed + NOTICE_MS, NOTICE_MS),
    ]
    with ledger.transaction() as session:
        row = session.get(models.Lease, "v-1")
        assert (row.end_ms, row.ended_by, row.noticed_ms) == (noticed + NOTICE_MS, "owner", noticed)
        events = list(session.scalars(select(models.TenantEvent).order_by(models.TenantEvent.tenant_id)))
        assert [(e.tenant_id, e.type, e.key) for e in events] == [
            ("acme", PREEMPTION_NOTICE, "v-1"),
            ("globex", PREEMPTION_NOTICE, "v-2"),
        ]
        assert events[0].payload["data"]["notice_s"] == 120
        # only acme has an endpoint: one delivery, pending
        assert [(d.tenant_id, d.state) for d in webhooks.list_deliveries(session)] == [("acme", "pending")]
        # a retry of the same preemption changes nothing and writes no second event
        assert preempt(session, lease_ids=("v-1",), noticed_ms=noticed) == []
        assert session.scalar(select(func.count()).select_from(models.TenantEvent)) == 2


def test_preemption_refusals_and_a_tenant_end(ledger: Ledger) -> None:
    with ledger.transaction() as session:
        open_weekend(session)
        open_lease(session, "acme", "gpu-1", T0 + HOUR, plan="valley", lease_id="v-1")
        open_lease(session, "acme", "gpu-2", T0, plan="valley", lease_id="v-2")
        with pytest.raises(CannotPreempt, match="name a lease, a GPU or an offer"):
            preempt(session)
        with pytest.raises(CannotPreempt, match="unknown lease 'nope'"):
            preempt(session, lease_ids=("nope",), noticed_ms=T0)
        with pytest.raises(CannotPreempt, match="not before the preemption"):
            preempt(session, lease_ids=("v-1",), noticed_ms=T0, at_ms=T0 + 60_000)
        with pytest.raises(CannotPreempt, match="is before the notice"):
            preempt(session, lease_ids=("v-2",), noticed_ms=T0 + HOUR, at_ms=T0 + 30_000)
        # a short notice is allowed (the card may credit it): at < noticed + the offer's notice
        (short,) = preempt(session, gpu="gpu-2", noticed_ms=T0 + HOUR, at_ms=T0 + HOUR + 30_000)
        assert (short.notice_ms, short.promised_notice_ms) == (30_000, NOTICE_MS)
        ended = end_lease(session, "v-1", T0 + 2 * HOUR)
        assert ended.end_ms == T0 + 2 * HOUR
        assert session.get(models.Lease, "v-1").ended_by == "tenant"
        with pytest.raises(CannotPreempt, match="has already ended"):
            preempt(session, lease_ids=("v-1",), noticed_ms=T0 + 3 * HOUR)


def test_maintenance_must_be_announced_ahead(ledger: Ledger) -> None:
    with ledger.transaction() as session:
        with pytest.raises(InvalidWindow, match="must be announced before it starts"):
            maintenance.announce(session, ["gpu-1"], T0, T0 + HOUR, announced_ms=T0 + 1)
        window = maintenance.announce(session, ["gpu-1"], T0 + HOUR, T0 + 2 * HOUR, "firmware", announced_ms=T0)
        assert maintenance.windows_overlapping(session, T0, T0 + HOUR + 1) == [window]
        assert maintenance.windows_overlapping(session, T0, T0 + HOUR) == []


def test_cli_offers_and_preempt_refuse_in_one_line(
    ledger: Ledger, billing_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--db", billing_db_url]
    assert (
        billing_main(
            [
                "offers",
                "open",
                "sat",
                "--gpus",
                "gpu-1",
                "--start",
                "2020-01-01T00:00:00Z",
                "--end",
                "2040-01-01T00:00:00Z",
                "--notice-s",
                "120",
                *url,
            ]
        )
        == 0
    )
    assert "offer sat: 1 GPUs" in capsys.readouterr().out
    assert (
        billing_main(["offers", "open", "bad", "--start", "2020-01-01", "--end", "2021-01-01", "--notice-s", "1", *url])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("wattmeter-billing: offer bad: name GPUs or a pool") and "\n" not in err
    assert (
        billing_main(
            [
                "leases",
                *url,
                "open",
                "--tenant",
                "acme",
                "--gpu",
                "gpu-2",
                "--start",
                "2026-11-01T00:00:00Z",
                "--plan",
                "valley",
            ]
        )
        == 2
    )
    assert "is in no open capacity offer" in capsys.readouterr().err
    assert billing_main(["leases", *url, "preempt", "nope", "--no-publish"]) == 2
    assert "unknown lease 'nope'" in capsys.readouterr().err
