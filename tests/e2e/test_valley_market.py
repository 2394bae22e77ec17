"""The valley market end to end on the real broker, the real Faust worker and the Parquet sink.

2 nodes of 2 H100s pinned at 50 % (385 W exactly), sampled every 10 s, from T0 = Monday
2026-11-02 00:00 UTC, on a card with a 60 s increment, a 1 h minimum, [interruption] and an
[sla.on_demand]:

- the owner (internal) trains on g0 and g1 for the first hour, then offers them for [1 h, 6 h);
- A leases g0 on the valley plan at 1 h; the owner preempts it 40 minutes in (notice at 38 min):
  inside the free first hour, so it owes nothing;
- B leases g1 on the valley plan at 1 h; preempted 3 h 0 min 30 s in, on the 120 s promised:
  per second to the instant, no increment or minimum;
- C leases g2 (node b) on demand for [0, 4 h); node b's agent is silent for 3 minutes from 1 h,
  so 180 s of C's 4 h are unmetered: availability 98.75 %, under 99.0: a 25 % credit.

The yield report: internal 2 GPU-h (g0, g1 in the first hour); rented 2,400,000 + 10,830,500 +
14,220,000 ms; idle the rest of the metered time; the offer: 2 GPUs x 5 h = 36,000,000 ms offered,
2,400,000 + 10,830,500 sold; its plan's revenue 2.40 - 2.48 + 10.83 = 10.75 over 10 offered GPU-hours.

By hand, at valley 3.60 and on_demand 7.20 per GPU-hour, energy 0.30 per kWh (PUE 1), no tax:
- A: 2,400,000 ms -> 2.40; 924,000,000 mJ = 0.2566.. kWh -> 0.077 -> 0.08; waiver -2.48; total 0.00
- B: 10,830,500 ms -> 10.8305 -> 10.83; 4,169,742,500 mJ = 1.1582.. kWh -> 0.347478.. -> 0.35; total 11.18
- C: 14,220,000 ms -> 28.44; 5,474,700,000 mJ = 1.52075 kWh -> 0.456225 -> 0.46;
     SLA 25 % of 28.44 = -7.11; total 21.79
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from sqlalchemy import delete

from agents.kafka_sink import KafkaSampleSink
from billing.cli import main as billing_main
from billing.leases import offers
from billing.leases.outbox import lease_horizon_ms, publish_pending
from billing.leases.service import open_lease
from billing.ledger.db import Ledger
from billing.ledger.models import UsageHourly
from billing.ledger.store import upsert_tenant
from billing.market import webhooks
from billing.market.notices import publish_events
from billing.market.preemption import preempt
from deploy.local.demo import windows_written
from deploy.local.fleet import FleetPlan, fleet_samples
from deploy.local.pipeline import service_env, start_sink, start_worker, wait_for
from tests.support.helpers import T0
from tests.support.webhook_receiver import SignedReceiver, signed_receiver

pytestmark = pytest.mark.broker

MINUTE, HOUR = 60_000, 3_600_000
CARD = """
name = "market"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "USD"
pue = "1"
increment_s = 60
minimum_s = 3600
[calendar]
timezone = "UTC"
[gpu_hour."*".valley]
"*" = "3.60"
[gpu_hour."*".on_demand]
"*" = "7.20"
[energy_kwh]
"*" = "0.30"
[tax]
"*" = "0"
[interruption]
notice_s = 120
free_if_preempted_within_s = 3600
short_notice_credit_percent = "100"
[sla.on_demand]
availability = "99.9"
credits = [
  { below = "99.9", percent = "10" }, { below = "99.0", percent = "25" }, { below = "95.0", percent = "100" },
]
"""
GAP = (T0 + HOUR, T0 + HOUR + 3 * MINUTE)  # node b sends nothing strictly inside this


@pytest.fixture
def receiver() -> Iterator[SignedReceiver]:
    with signed_receiver() as state:
        yield state


def send_samples(bootstrap: str, plan: FleetPlan) -> int:
    """The plan's samples through the agent's Kafka sink, less node b's inside GAP (its agent is down)."""
    sink = KafkaSampleSink(bootstrap)
    sent = 0
    try:
        for sample in fleet_samples(plan):
            if sample.node_id.endswith("-b") and GAP[0] < sample.ts_ms < GAP[1]:
                continue
            sink.send(sample)
            sent += 1
    finally:
        sink.close()
    return sent


def cli(*args: str) -> int:
    return billing_main(list(args))


def test_offer_preemption_and_sla_on_real_parts(kafka_broker, run_id, tmp_path: Path, receiver, capsys):
    state, hooks = receiver, receiver.url
    plan = FleetPlan(
        nodes=[f"vm-{run_id}-a", f"vm-{run_id}-b"], gpus_per_node=2, start_ms=T0, ticks=4 * 360 + 15, interval_ms=10_000
    )
    plan.util = 50
    g0, g1, g2, _idle = plan.gpu_uuids()
    owner, a, b, c = (f"{name}-{run_id}" for name in ("owner", "a", "b", "c"))
    db = f"sqlite:///{tmp_path}/billing.db"
    ledger = Ledger(db)
    with ledger.transaction() as session:
        upsert_tenant(session, "test", owner, internal=True)
        for tenant in (a, b, c):
            upsert_tenant(session, "test", tenant)
        open_lease(session, owner, g0, T0, T0 + HOUR, lease_id=f"own0-{run_id}")
        open_lease(session, owner, g1, T0, T0 + HOUR, lease_id=f"own1-{run_id}")
        open_lease(session, c, g2, T0, T0 + 4 * HOUR, lease_id=f"c-{run_id}")
        offers.open_offer(
            session, f"valley-{run_id}", start_ms=T0 + HOUR, end_ms=T0 + 6 * HOUR, notice_ms=120_000, gpus=[g0, g1]
        )
        open_lease(session, a, g0, T0 + HOUR, plan="valley", lease_id=f"a-{run_id}")
        open_lease(session, b, g1, T0 + HOUR, plan="valley", lease_id=f"b-{run_id}")
        for tenant in (a, b):
            state.secrets[tenant] = webhooks.set_endpoint(session, tenant, f"{hooks}/{tenant}")
    a_end, b_end = T0 + HOUR + 40 * MINUTE, T0 + 4 * HOUR + 30_500
    with ledger.transaction() as session:
        (pa,) = preempt(session, lease_ids=(f"a-{run_id}",), noticed_ms=a_end - 120_000)  # default: + the notice
        (pb,) = preempt(session, gpu=g1, noticed_ms=b_end - 120_000)
    assert (pa.ends_ms, pb.ends_ms) == (a_end, b_end)

    # the notices reach the tenants: signed webhooks, and the compacted gpu.lease.events topic
    assert webhooks.deliver_due(ledger) == (2, 0)
    assert state.bad == 0 and len(state.events) == 2
    by_lease = {event["data"]["lease_id"]: event for event in state.events}
    assert by_lease[f"a-{run_id}"]["data"]["ends_at_ms"] == a_end
    assert by_lease[f"b-{run_id}"]["data"]["noticed_at_ms"] == b_end - 120_000
    assert {e["data"]["notice_s"] for e in state.events} == {120}
    assert publish_events(ledger, kafka_broker.bootstrap) == 2
    assert publish_events(ledger, kafka_broker.bootstrap) == 0

    assert publish_pending(ledger, kafka_broker.bootstrap, lease_horizon_ms(), T0) > 0
    send_samples(kafka_broker.bootstrap, plan)
    usage_dir = tmp_path / "usage"
    env = service_env(
        kafka_broker.bootstrap,
        f"vm-{run_id}",
        usage_dir,
        tmp_path / "state",
        WATTMETER_CHECK_FUTURE="0",
        WATTMETER_SINK_SECONDS="1",
    )
    services = (start_worker(env, tmp_path / "worker.log"), start_sink(env, tmp_path / "sink.log"))
    try:
        wait_for(
            lambda: windows_written(usage_dir, T0, T0 + 4 * HOUR, [g0, g1, g2]) >= 3 * 240 - 3,
            300,
            "the GPU-windows of 4 hours in Parquet",
            services,
        )
    finally:
        for service in services:
            service.stop()

    card = tmp_path / "market.toml"
    card.write_text(CARD)
    common = ["--db", db]
    assert cli("ratecards", "load", str(card), *common) == 0
    for tenant in (owner, a, b, c):
        assert (
            cli("contracts", "add", "--tenant", tenant, "--rate-card", "market", "--from", "2026-01-01", *common) == 0
        )
    capsys.readouterr()
    assert cli("run", "--period", "2026-11", "--usage-dir", str(usage_dir), "--json", *common) == 0
    run = json.loads(capsys.readouterr().out)
    outcomes = {row["tenant_id"]: row for row in run["tenants"]}
    assert outcomes[owner]["status"] == "internal"
    invoices = {}
    for tenant in (a, b, c):
        assert cli("invoices", "show", str(outcomes[tenant]["invoice_id"]), "--json", *common) == 0
        invoices[tenant] = json.loads(capsys.readouterr().out)

    def lines(tenant: str) -> list[tuple[str, str]]:
        return [(line["kind"], line["amount"]) for line in invoices[tenant]["lines"]]

    assert lines(a) == [("gpu_time", "2.40"), ("energy", "0.08"), ("preemption_credit", "-2.48"), ("tax", "0.00")]
    assert lines(b) == [("gpu_time", "10.83"), ("energy", "0.35"), ("tax", "0.00")]
    assert lines(c) == [("gpu_time", "28.44"), ("energy", "0.46"), ("sla_credit", "-7.11"), ("tax", "0.00")]
    assert [Decimal(invoices[t]["total"]) for t in (a, b, c)] == [Decimal("0.00"), Decimal("11.18"), Decimal("21.79")]
    waiver = invoices[a]["lines"][2]["description"]
    assert f"lease a-{run_id}" in waiver and "free if preempted within 3600 s" in waiver
    sla = invoices[c]["lines"][2]["description"]
    assert "availability 98.750% against 99.9% promised" in sla and "25% of the plan's charge" in sla

    for tenant in (a, b, c):
        assert cli("invoices", "finalize", str(outcomes[tenant]["invoice_id"]), *common) == 0
    assert cli("run", "--period", "2026-11", "--usage-dir", str(usage_dir), *common) == 0  # a re-run: nothing new
    capsys.readouterr()
    assert cli("reconcile", "--period", "2026-11", "--usage-dir", str(usage_dir), "--json", *common) == 0
    report = json.loads(capsys.readouterr().out)
    steps = {
        (row["tenant_id"], item["cause"]): item
        for row in report["tenants"]
        for item in row["items"]
        if item["leg"] == "money"
    }
    assert Decimal(steps[(a, "preempted by the owner: waived or credited")]["amount"]) == Decimal("-2.48")
    assert Decimal(steps[(c, "SLA credit")]["amount"]) == Decimal("-7.11")

    # the yield report: internal, rented and idle hours, and the offer's fill rate
    assert cli("rollup", "--period", "2026-11", "--usage-dir", str(usage_dir), *common) == 0
    capsys.readouterr()
    fleet = plan.gpu_uuids()
    with ledger.transaction() as session:  # the session's broker is shared: other tests' GPUs are not this fleet
        session.execute(delete(UsageHourly).where(UsageHourly.gpu_uuid.not_in(fleet)))
    assert cli("yield", "--period", "2026-11", "--json", *common) == 0
    fleet_yield = json.loads(capsys.readouterr().out)
    ends = duckdb.sql(
        f"SELECT gpu_uuid, max(window_start_ms) + 60000 FROM read_parquet('{usage_dir}/date=*/*.parquet') "
        f"WHERE gpu_uuid IN ({', '.join(repr(g) for g in fleet)}) GROUP BY gpu_uuid"
    ).fetchall()
    assert len(ends) == 4
    metered = sum(end - T0 for _, end in ends) - 2 * (GAP[1] - GAP[0])  # node b's two GPUs were silent
    internal, rented = 2 * HOUR, 2_400_000 + 10_830_500 + 14_220_000
    gpu_ms = fleet_yield["fleet"]["gpu_ms"]
    assert (gpu_ms["internal"], gpu_ms["leased"], gpu_ms["idle"]) == (internal, rented, metered - internal - rented)
    (offer,) = fleet_yield["offers"]
    assert (offer["offered_gpu_ms"], offer["sold_gpu_ms"]) == (36_000_000, 2_400_000 + 10_830_500)
    assert offer["fill_rate"] == str(round(Decimal(13_230_500) / Decimal(36_000_000), 6))
    # per hour: 1 h-2 h both sold 40 min of A and 60 of B; 2 h-4 h B alone; 4 h-5 h B's 30.5 s; 5 h-6 h none
    sold_by_hour = [(h["hour"][11:16], h["offered_gpu_ms"], h["sold_gpu_ms"]) for h in offer["hours"]]
    assert sold_by_hour == [
        ("01:00", 2 * HOUR, HOUR + 40 * MINUTE),
        ("02:00", 2 * HOUR, HOUR),
        ("03:00", 2 * HOUR, HOUR),
        ("04:00", 2 * HOUR, 30_500),
        ("05:00", 2 * HOUR, 0),
    ]
    assert fleet_yield["market_revenue_per_offered_gpu_hour"] == {"USD": "1.0750"}
    ledger.dispose()
