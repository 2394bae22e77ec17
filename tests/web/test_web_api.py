"""The JSON API's figures: usage equals the invoice and the Parquet to the ms and mJ, days are the
tenant's own, peak and valley split as the card says, the per-GPU table, the usage behind each invoice
line, the statement, and leases managed by the operator."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from billing.ledger.models import RollupRun
from billing.ledger.store import add_contract, upsert_tenant
from billing.readmodel import queries
from billing.readmodel.hourly import rollup_period
from billing.web.api import iso
from tests.support.billing_fixtures import HOUR, NOV_1, SIMPLE_CARD, UsageWriter, ledger_with, minutes
from tests.support.web_support import PERIOD, TENANTS, World, build_world, serve

API = "/api/v1"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("web-api")
    built = build_world(f"sqlite:///{root}/billing.db", root / "usage")
    yield built
    built.ledger.dispose()


def get(world: World, who: str, path: str, **params: Any) -> Any:
    with world.client(who) as client:
        response = client.get(API + path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def parquet_sums(usage_root: Path, tenant_id: str, start_ms: int, end_ms: int) -> tuple[int, int, int]:
    """(allocated ms, busy ms, energy mJ) of a tenant's records in [start, end), straight from the Parquet."""
    con = duckdb.connect()
    row = con.execute(
        f"""SELECT sum(allocated_gpu_ms), sum(busy_gpu_ms), sum(energy_mj)
            FROM read_parquet('{usage_root}/**/*.parquet', hive_partitioning = false)
            WHERE tenant_id = '{tenant_id}' AND window_start_ms >= {start_ms} AND window_start_ms < {end_ms}"""
    ).fetchone()
    con.close()
    assert row is not None
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)


def test_usage_equals_invoice_and_parquet_over_a_real_socket(billing_db_url: str, tmp_path: Path) -> None:
    """On SQLite and PostgreSQL, through uvicorn: for every tenant, the month's usage from the API equals
    the invoice's GPU time and energy lines (quantity_base) and the Parquet's sums, exactly."""
    world = build_world(billing_db_url, tmp_path / "usage")
    try:
        with serve(world.app()) as base, httpx.Client(base_url=base + API, timeout=30) as http:
            for spec in TENANTS:
                headers = world.auth(spec.tenant_id)
                usage = http.get("/usage", params={"period": PERIOD}, headers=headers).json()
                invoice = http.get(f"/invoices/{world.invoices[spec.tenant_id]}", headers=headers).json()
                total = usage["total"]
                lines = invoice["lines"]
                gpu_ms = sum(line["quantity_base"] for line in lines if line["kind"] == "gpu_time")
                energy = sum(line["quantity_base"] for line in lines if line["kind"] == "energy")
                parquet = parquet_sums(world.usage_root, spec.tenant_id, usage["start_ms"], usage["end_ms"])
                expected = world.expected[spec.tenant_id]
                assert total["allocated_gpu_ms"] == gpu_ms == parquet[0] == expected.allocated_gpu_ms
                assert total["busy_gpu_ms"] == parquet[1] == expected.busy_gpu_ms
                assert total["energy_mj"] == energy == parquet[2] == expected.energy_mj
                assert total["records"] == expected.records
                assert sum(b["allocated_gpu_ms"] for b in usage["buckets"]) == gpu_ms
                assert sum(b["energy_mj"] for b in usage["buckets"]) == energy
                assert Decimal(total["gpu_hours"]) == Decimal(gpu_ms) / 3_600_000
    finally:
        world.ledger.dispose()


def test_days_are_the_tenants_own(world: World) -> None:
    acme = get(world, "acme", "/usage", period=PERIOD)
    assert acme["timezone"] == "America/New_York"
    assert len(acme["buckets"]) == 30
    with world.ledger.transaction() as session:  # how fresh: when the period's rollup was built
        built = session.get(RollupRun, PERIOD).built_ms
    assert acme["as_of"] == iso(built)
    days = {b["label"]: b for b in acme["buckets"]}
    # Mon 2 Nov 02:00-05:00Z is Sunday 1 Nov 21:00-24:00 in New York, whose 1 Nov has 25 hours
    first = days["2026-11-01"]
    assert first["end_ms"] - first["start_ms"] == 25 * HOUR
    assert first["allocated_gpu_ms"] == 3 * HOUR
    assert days["2026-11-02"]["allocated_gpu_ms"] == 0
    assert days["2026-11-03"]["allocated_gpu_ms"] == 2 * HOUR
    assert days["2026-11-07"]["allocated_gpu_ms"] == HOUR
    assert days["2026-11-15"]["end_ms"] - days["2026-11-15"]["start_ms"] == 24 * HOUR

    globex = {b["label"]: b for b in get(world, "globex", "/usage", period=PERIOD)["buckets"]}
    # 4 Nov 22:00Z -> 5 Nov 01:00Z is Berlin's 23:00 on the 4th to 02:00 on the 5th
    assert globex["2026-11-04"]["allocated_gpu_ms"] == HOUR
    assert globex["2026-11-05"]["allocated_gpu_ms"] == 2 * HOUR
    initech = {b["label"]: b for b in get(world, "initech", "/usage", period=PERIOD)["buckets"]}
    # 10 Nov 15:00-17:00Z is Tokyo's 11 Nov 00:00-02:00
    assert initech["2026-11-10"]["allocated_gpu_ms"] == 0
    assert initech["2026-11-11"]["allocated_gpu_ms"] == 2 * HOUR


def test_hours_on_a_dst_day(world: World) -> None:
    usage = get(world, "acme", "/usage", **{"from": "2026-11-01", "to": "2026-11-02", "grain": "hour"})
    labels = [b["label"] for b in usage["buckets"]]
    assert len(labels) == 25  # 01:00 comes twice, once with each offset
    assert "2026-11-01T01:00-04:00" in labels and "2026-11-01T01:00-05:00" in labels
    busy = {b["label"]: b["allocated_gpu_ms"] for b in usage["buckets"] if b["allocated_gpu_ms"]}
    assert busy == {"2026-11-01T21:00-05:00": HOUR, "2026-11-01T22:00-05:00": HOUR, "2026-11-01T23:00-05:00": HOUR}


def test_peak_and_valley_split_as_the_invoice(world: World) -> None:
    for spec in TENANTS:
        usage = get(world, spec.tenant_id, "/usage", period=PERIOD)
        invoice = get(world, spec.tenant_id, f"/invoices/{world.invoices[spec.tenant_id]}")
        by_period: dict[str, int] = {}
        for line in invoice["lines"]:
            if line["kind"] == "gpu_time":
                by_period[line["tou_period"]] = by_period.get(line["tou_period"], 0) + line["quantity_base"]
        assert {name: p["allocated_gpu_ms"] for name, p in usage["periods"].items()} == by_period
        for bucket in usage["buckets"]:
            assert sum(p["allocated_gpu_ms"] for p in bucket["periods"].values()) == bucket["allocated_gpu_ms"]
    acme = get(world, "acme", "/usage", period=PERIOD)["periods"]
    assert acme["valley"]["allocated_gpu_ms"] == 4 * HOUR  # 3 h weekday night + 1 h Saturday
    assert acme["peak"]["allocated_gpu_ms"] == 2 * HOUR
    globex = {b["label"]: b for b in get(world, "globex", "/usage", period=PERIOD)["buckets"]}
    fifth = globex["2026-11-05"]["periods"]
    assert fifth["peak"]["allocated_gpu_ms"] == HOUR and fifth["valley"]["allocated_gpu_ms"] == HOUR


def test_usage_by_gpu(world: World) -> None:
    usage = get(world, "acme", "/usage", period=PERIOD, by="gpu")
    rows = {(b["label"], b["gpu_uuid"], b["model"]): b["allocated_gpu_ms"] for b in usage["buckets"]}
    assert rows == {
        ("2026-11-01", "GPU-A1", "H100"): 3 * HOUR,
        ("2026-11-03", "GPU-A1", "H100"): 2 * HOUR,
        ("2026-11-07", "GPU-A2", "A100"): HOUR,
    }
    assert usage["total"]["allocated_gpu_ms"] == world.expected["acme"].allocated_gpu_ms


def test_gpu_table(world: World) -> None:
    table = get(world, "acme", "/usage/gpus", period=PERIOD)
    gpus = {g["gpu_uuid"]: g for g in table["gpus"]}
    assert set(gpus) == {"GPU-A1", "GPU-A2"}
    a1 = gpus["GPU-A1"]
    assert (a1["model"], a1["gpu_hours"], a1["busy_gpu_hours"], a1["utilization"]) == (
        "H100",
        "5.000000",
        "2.500000",
        "0.5000",
    )
    assert a1["kwh"] == "2.000000"  # 300 minutes at 400 W
    assert a1["periods"]["peak"]["gpu_hours"] == "2.000000" and a1["periods"]["valley"]["gpu_hours"] == "3.000000"
    assert gpus["GPU-A2"]["model"] == "A100" and set(gpus["GPU-A2"]["periods"]) == {"valley"}
    assert table["total"]["allocated_gpu_ms"] == world.expected["acme"].allocated_gpu_ms


def test_invoice_lines_carry_the_usage_behind_them(world: World) -> None:
    for spec in TENANTS:
        invoice = get(world, spec.tenant_id, f"/invoices/{world.invoices[spec.tenant_id]}")
        assert invoice["tenant_name"] == spec.name and invoice["status"] == "finalized"
        usage_lines = [line for line in invoice["lines"] if line["kind"] in ("gpu_time", "energy")]
        assert usage_lines
        for line in usage_lines:
            behind = line["usage"]
            assert behind is not None and behind["matches_quantity"], line
            assert behind["quantity"] == line["quantity_base"]
            assert sum(g[behind["measure"]] for g in behind["by_gpu"]) == line["quantity_base"]
            assert {g["gpu_uuid"] for g in behind["by_gpu"]} <= world.expected[spec.tenant_id].gpus
            if line["kind"] == "gpu_time":
                assert {(g["model"], g["plan"]) for g in behind["by_gpu"]} == {(line["model"], line["plan"])}
        assert all(line["usage"] is None for line in invoice["lines"] if line["kind"] == "tax")
        assert sum(Decimal(line["amount"]) for line in invoice["lines"]) == Decimal(invoice["total"])
    # by id as well as by number, the same invoice
    by_id = get(world, "acme", "/invoices/1")
    assert by_id["number"] == world.invoices["acme"]


def test_statement_json(world: World) -> None:
    for spec in TENANTS:
        statement = get(world, spec.tenant_id, f"/statements/{spec.tenant_id}/{PERIOD}")
        usage = get(world, spec.tenant_id, "/usage", period=PERIOD)
        assert statement["tenant_name"] == spec.name and statement["timezone"] == spec.timezone
        assert statement["total"] == usage["total"] and statement["days"] == usage["buckets"]
        assert [i["number"] for i in statement["invoices"]] == [world.invoices[spec.tenant_id]]
        assert statement["amount_due"] == statement["invoices"][0]["amount_due"]
        assert sum(g["allocated_gpu_ms"] for g in statement["gpus"]) == world.expected[spec.tenant_id].allocated_gpu_ms


def test_statement_csv_and_pdf_carry_the_same_figures(world: World) -> None:
    from billing.statements.statement import parse_csv

    with world.client("globex") as client:
        csv_response = client.get(f"{API}/statements/globex/{PERIOD}.csv")
        pdf_response = client.get(f"{API}/statements/globex/{PERIOD}.pdf")
        statement = client.get(f"{API}/statements/globex/{PERIOD}").json()
    assert csv_response.status_code == 200 and csv_response.headers["content-type"].startswith("text/csv")
    assert csv_response.headers["content-disposition"] == f'attachment; filename="statement-globex-{PERIOD}.csv"'
    sections = parse_csv(csv_response.text)
    fields = {row["field"]: row["value"] for row in sections["statement"]}
    assert fields["tenant_id"] == "globex" and fields["timezone"] == "Europe/Berlin"
    csv_text = csv_response.text
    assert str(statement["total"]["allocated_gpu_ms"]) in csv_text and str(statement["total"]["energy_mj"]) in csv_text
    assert world.invoices["globex"] in csv_text and statement["amount_due"] in csv_text
    assert pdf_response.status_code == 200 and pdf_response.headers["content-type"] == "application/pdf"
    assert pdf_response.content.startswith(b"%PDF")


def test_invoice_lists_and_drafts(world: World) -> None:
    mine = get(world, "acme", "/invoices")["invoices"]
    assert [i["number"] for i in mine] == [world.invoices["acme"]]  # the December draft is not shown
    everything = get(world, "finance", "/invoices")["invoices"]
    assert {i["tenant_id"] for i in everything} == {t.tenant_id for t in TENANTS}
    drafts = get(world, "finance", "/invoices", status="draft")["invoices"]
    assert [(i["tenant_id"], i["id"], i["number"]) for i in drafts] == [("acme", world.draft_ids["acme"], None)]
    assert get(world, "finance", f"/invoices/{world.draft_ids['acme']}")["status"] == "draft"
    assert get(world, "acme", "/invoices", period=PERIOD, status="finalized")["invoices"][0]["tenant_id"] == "acme"
    assert get(world, "finance", "/invoices", tenant="globex")["invoices"][0]["number"] == world.invoices["globex"]


def test_windows_and_bad_input(world: World) -> None:
    a = get(world, "acme", "/usage", **{"from": "2026-11-03T14:00:00Z", "to": "2026-11-03T15:00:00Z", "grain": "hour"})
    assert a["total"]["allocated_gpu_ms"] == HOUR
    b = get(world, "finance", "/usage", tenant="acme", **{"from": str(NOV_1), "to": str(NOV_1 + 30 * 24 * HOUR)})
    assert b["total"]["allocated_gpu_ms"] == world.expected["acme"].allocated_gpu_ms
    cases = [
        ({"period": "2026-13"}, "period: write a month as YYYY-MM, such as 2026-11"),
        ({}, "period: give a period (YYYY-MM) or both from and to"),
        ({"period": PERIOD, "from": "2026-11-01"}, "period: give either period or from and to, not both"),
        ({"from": "yesterday", "to": "2026-11-02"}, "from: must be an ISO 8601 date or time"),
        ({"from": "2026-11-02", "to": "2026-11-01"}, "to: must be after from"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "to: a window of days spans at most 366 days"),
        ({"from": "2026-01-01", "to": "2026-03-01", "grain": "hour"}, "to: a window of hours spans at most 32 days"),
        ({"period": PERIOD, "grain": "week"}, "grain: "),
        ({"period": PERIOD, "by": "model"}, "by: "),
    ]
    with world.client("acme") as client:
        for params, message in cases:
            response = client.get(API + "/usage", params=params)
            assert response.status_code == 422, (params, response.text)
            assert response.json()["error"].startswith(message), (params, response.text)
    with world.client("finance") as client:
        response = client.get(API + "/usage", params={"period": PERIOD})
        assert response.status_code == 422
        assert response.json() == {"error": "tenant: a finance key names the tenant (tenant=...)"}


def test_leases_by_the_operator(world: World) -> None:
    with world.client("operator") as op:
        valley = {"tenant_id": "initech", "gpu_uuid": "GPU-NEW", "plan": "valley", "start": "2026-12-01T00:00:00Z"}
        refused = op.post(API + "/leases", json=valley)
        assert refused.status_code == 409 and "is in no open capacity offer" in refused.json()["error"]
        offer = {"offer_id": "dec", "gpus": ["GPU-NEW"], "start": "2026-12-01", "end": "2100-01-01", "notice_s": 120}
        offered = op.post(API + "/offers", json=offer)
        assert offered.status_code == 201, offered.text
        assert offered.json()["plans"] == ["interruptible", "valley"] and offered.json()["notice_s"] == 120
        assert op.post(API + "/offers", json=offer).json() == offered.json()  # the same request: no change
        conflict = op.post(API + "/offers", json={**offer, "notice_s": 30})
        assert conflict.status_code == 409 and "exists with different fields" in conflict.json()["error"]
        bad = op.post(API + "/offers", json={**offer, "offer_id": "x", "gpus": []})
        assert bad.status_code == 422 and "name GPUs or a pool" in bad.json()["error"]
        opened = op.post(
            API + "/leases",
            json={
                "tenant_id": "initech",
                "gpu_uuid": "GPU-NEW",
                "plan": "valley",
                "start": "2026-12-01T00:00:00Z",
                "lease_id": "lease-new",
            },
        )
        assert opened.status_code == 201, opened.text
        assert opened.json()["end_ms"] is None and opened.json()["plan"] == "valley"
        again = op.post(
            API + "/leases",
            json={
                "tenant_id": "initech",
                "gpu_uuid": "GPU-NEW",
                "plan": "valley",
                "start": "2026-12-01T00:00:00Z",
                "lease_id": "lease-new",
            },
        )
        assert again.status_code == 201 and again.json() == opened.json()  # the same request: no change
        overlap = op.post(API + "/leases", json={"tenant_id": "acme", "gpu_uuid": "GPU-NEW", "start": "2026-12-05"})
        assert overlap.status_code == 409 and "overlaps" in overlap.json()["error"]
        listed = op.get(API + "/leases", params={"gpu": "GPU-NEW", "active_at": "2026-12-02T00:00:00Z"}).json()
        assert [lease["lease_id"] for lease in listed["leases"]] == ["lease-new"]
        ended = op.post(API + "/leases/lease-new/end", json={"end": "2026-12-10T00:00:00Z"})
        assert ended.status_code == 200 and ended.json()["end"] == "2026-12-10T00:00:00.000Z"
        listed_offers = op.get(API + "/offers", params={"status": "open"}).json()["offers"]
        assert [o["offer_id"] for o in listed_offers] == ["dec"]
        later = {**valley, "start": "2099-01-01T00:00:00Z", "lease_id": "lease-later"}
        assert op.post(API + "/leases", json=later).status_code == 201
        preempted = op.post(API + "/leases/preempt", json={"offer_id": "dec", "at": "2099-06-01T00:00:00Z"})
        assert preempted.status_code == 200, preempted.text
        (notice,) = preempted.json()["preempted"]
        assert (notice["lease_id"], notice["ends_at"]) == ("lease-later", "2099-06-01T00:00:00.000Z")
        unknown = op.post(API + "/leases/preempt", json={"lease_ids": ["nope"]})
        assert unknown.status_code == 409 and "unknown lease 'nope'" in unknown.json()["error"]
        closed = op.post(API + "/offers/dec/close")
        assert closed.status_code == 200 and closed.json()["status"] == "closed"
        assert op.post(API + "/offers/nope/close").status_code == 404
        assert op.post(API + "/leases/lease-new/end", json={"end": "2026-12-10T00:00:00Z"}).status_code == 200
        assert op.post(API + "/leases/lease-new/end", json={"end": "2026-12-11T00:00:00Z"}).status_code == 409
        assert op.get(API + "/leases", params={"gpu": "GPU-NEW", "active_at": "2026-12-10T00:00:00Z"}).json() == {
            "leases": []
        }
        assert op.post(API + "/leases/no-such-lease/end", json={"end": 1}).status_code == 404
        unknown = op.post(API + "/leases", json={"tenant_id": "nobody", "gpu_uuid": "G", "start": 0})
        assert unknown.status_code == 404
        bad = op.post(API + "/leases", json={"tenant_id": "acme", "gpu_uuid": "G", "start": "soon"})
        assert bad.status_code == 422 and bad.json()["error"].startswith("start: ")
        backwards = op.post(API + "/leases", json={"tenant_id": "acme", "gpu_uuid": "G", "start": 10, "end": 5})
        assert backwards.status_code == 422 and "not after its start" in backwards.json()["error"]
        plan = op.post(API + "/leases", json={"tenant_id": "acme", "gpu_uuid": "G", "start": 0, "plan": "free"})
        assert plan.status_code == 422 and plan.json()["error"].startswith("plan: ")
        by_tenant = op.get(API + "/leases", params={"tenant": "initech"}).json()["leases"]
        assert {lease["lease_id"] for lease in by_tenant} == {"lease-initech-GPU-I1", "lease-new", "lease-later"}
    finance = get(world, "finance", "/leases", tenant="initech")
    assert {lease["lease_id"] for lease in finance["leases"]} == {"lease-initech-GPU-I1", "lease-new", "lease-later"}


def test_hours_no_contract_covers_are_unpriced(tmp_path: Path) -> None:
    """A contract from 15 Nov: the usage before is shown as unpriced, not dropped or refused."""
    ledger = ledger_with(f"sqlite:///{tmp_path}/b.db")
    with ledger.transaction() as session:
        upsert_tenant(session, "test", "late", timezone="UTC")
        add_contract(session, "test", "late", "simple", NOV_1 + 14 * 24 * HOUR)
    writer = UsageWriter(tmp_path / "usage")
    writer.write(minutes("late", NOV_1 + 9 * 24 * HOUR + 12 * HOUR, 60))  # Tue 10 Nov noon: no contract yet
    writer.write(minutes("late", NOV_1 + 16 * 24 * HOUR + 12 * HOUR, 60))  # Tue 17 Nov noon: peak
    rollup_period(ledger, tmp_path / "usage", PERIOD)
    with ledger.transaction() as session:
        start, end = queries.period_window(session, "late", PERIOD)
        total = queries.usage_total(queries.tenant_usage(session, "late", start, end))
        gpus = queries.gpu_table(session, "late", start, end)
    assert {name: m.allocated_gpu_ms for name, m in total.periods.items()} == {"peak": HOUR, queries.UNPRICED: HOUR}
    assert gpus[0].period(queries.UNPRICED).allocated_gpu_ms == HOUR
    ledger.dispose()


def test_usage_behind_lines_is_exact_for_a_gpu_with_two_models_and_two_plans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast per-GPU read folds the plan into an integer and takes a GPU's model as one: a GPU that
    shows two models, or two plans, must still give each line exactly its own usage."""
    from billing.invoicing.service import finalize_period, run_period

    card = SIMPLE_CARD + '[gpu_hour."*".valley]\npeak = "2.00"\nvalley = "1.00"\n'
    ledger = ledger_with(f"sqlite:///{tmp_path}/b.db", card)
    writer = UsageWriter(tmp_path / "usage")
    writer.write(minutes("acme", NOV_1 + 9 * 24 * HOUR + 12 * HOUR, 90, gpu="GPU-1", model="H100"))
    writer.write(minutes("acme", NOV_1 + 9 * 24 * HOUR + 14 * HOUR, 45, gpu="GPU-1", model="A100", lease="l2"))
    writer.write(minutes("acme", NOV_1 + 12 * 24 * HOUR + 2 * HOUR, 30, gpu="GPU-1", plan="valley", lease="l3"))
    run_period(ledger, tmp_path / "usage", PERIOD, "test")
    [invoice] = finalize_period(ledger, "test", PERIOD)
    rollup_period(ledger, tmp_path / "usage", PERIOD)
    plain = queries._pieces_query
    asked: list[object] = []
    monkeypatch.setattr(queries, "_pieces_query", lambda *a, **k: asked.append(a) or plain(*a, **k))
    with ledger.transaction() as session:
        detail = queries.invoice_detail(session, str(invoice.number))
    assert asked, "two models in one piece of one GPU: the plain grouping must answer"
    usage_lines = [line for line in detail.lines if line.kind in ("gpu_time", "energy")]
    assert {(line.model, line.plan) for line in usage_lines if line.kind == "gpu_time"} == {
        ("H100", "on_demand"),
        ("A100", "on_demand"),
        ("H100", "valley"),
    }
    for line in usage_lines:
        assert line.usage is not None and line.usage.matches_quantity, line
        if line.kind == "gpu_time":
            assert {(g.model, g.plan) for g in line.usage.by_gpu} == {(line.model, line.plan)}
    ledger.dispose()


def test_spend_is_the_tenants_own_and_issued_months_have_no_forecast(world: World) -> None:
    spend = get(world, "acme", "/spend", period=PERIOD)
    assert (spend["tenant_id"], spend["period"], spend["status"]) == ("acme", PERIOD, "finalized")
    assert spend["forecast_subtotal"] is None and spend["lines"] and spend["as_of"]
    assert Decimal(spend["total"]) == sum(Decimal(line["amount"]) for line in spend["lines"])
    with world.client("finance") as client:
        assert client.get(API + "/spend", params={"period": PERIOD}).status_code == 422  # names the tenant
        assert client.get(API + "/spend", params={"tenant": "nobody"}).status_code == 404
        assert client.get(API + "/spend", params={"tenant": "acme", "period": PERIOD}).json() == spend
    with world.client("operator") as client:
        assert client.get(API + "/spend", params={"tenant": "acme"}).status_code == 403


def test_budgets_a_tenant_sets_its_own_and_finance_its_own(world: World) -> None:
    with world.client("acme") as client:
        own = client.post(API + "/budgets", json={"amount": "5000.00", "thresholds": [80, 50, 100]})
        assert own.status_code == 201, own.text
        assert (own.json()["owner"], own.json()["thresholds"], own.json()["secret"]) == ("tenant", [50, 80, 100], None)
        bad = client.post(API + "/budgets", json={"amount": "50.001"})
        assert bad.status_code == 422 and "budget amount '50.001'" in bad.json()["error"]
    with world.client("finance") as client:
        hook = {"tenant_id": "acme", "amount": "9000.00", "webhook_url": "https://finance.example/hooks"}
        theirs = client.post(API + "/budgets", json=hook)
        assert theirs.status_code == 201 and theirs.json()["owner"] == "finance"
        assert theirs.json()["secret"].startswith("whsec_")
        both = client.get(API + "/budgets", params={"tenant": "acme"}).json()["budgets"]
        assert [b["owner"] for b in both] == ["finance", "tenant"]
    mine = get(world, "acme", "/budgets")["budgets"]
    assert [b["owner"] for b in mine] == ["tenant"]  # finance's budget is finance's
