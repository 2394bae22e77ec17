"""Leases' system of record: the service on a real database, the importers, the trimmed
timeline, the outbox, the CLI, and a crash between commit and publish on the real broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
from sqlalchemy import func, select

from agents.config import AgentConfig
from billing.leases import outbox
from billing.leases.cli import main as lease_main
from billing.leases.errors import (
    InvalidHorizon,
    InvalidLease,
    LeaseAlreadyEnded,
    LeaseFileError,
    LeaseIdConflict,
    LeaseOverlap,
    PublishFailed,
    UnknownLease,
    UnknownTenant,
)
from billing.leases.importers import LeaseRow, parse_csv, parse_jsonl, parse_time, read_lease_file
from billing.leases.offers import open_offer
from billing.leases.service import (
    default_lease_id,
    end_lease,
    import_leases,
    list_leases,
    open_lease,
)
from billing.ledger.db import Ledger
from billing.ledger.errors import Conflict, NotFound
from billing.ledger.models import AuditEntry, LeaseOutbox, Tenant
from billing.ledger.models import Lease as LeaseRowModel
from schemas.leases import GpuLeaseTimeline, Lease, trim_timeline
from schemas.topics import GPU_LEASES
from schemas.validate import InvalidMessage, parse_lease_timeline
from streams.leases import LeaseIndex
from tests.support.helpers import T0

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "schemas" / "jsonschema" / "gpu_lease_timeline.v1.json").read_text())
HOUR = 3_600_000
DAY = 24 * HOUR
MIB = 1024 * 1024
GPUS = ("gpu-1", "gpu-2", "gpu-3")


def add_tenant(session, tenant_id: str) -> None:
    session.add(
        Tenant(
            tenant_id=tenant_id,
            name=tenant_id.title(),
            currency="USD",
            timezone="UTC",
            tax_jurisdiction="*",
            contact_email=None,
            stripe_customer_id=None,
            created_ms=0,
        )
    )


@pytest.fixture
def ledger(billing_db_url: str):
    """A migrated ledger with tenants acme and globex, and gpu-1..3 offered for the valley plans
    (billing_db_url: SQLite and PostgreSQL)."""
    ledger = Ledger(billing_db_url)
    with ledger.transaction() as session:
        for tenant in ("acme", "globex"):
            if session.get(Tenant, tenant) is None:
                add_tenant(session, tenant)
        open_offer(session, "test-valley", start_ms=T0 - 30 * DAY, end_ms=T0 + 400 * DAY, notice_ms=0, gpus=GPUS)
    yield ledger
    ledger.dispose()


def counts(ledger: Ledger) -> tuple[int, int, int]:
    """(leases, audit entries about leases, outbox rows)."""
    with ledger.transaction() as session:
        return counts_in(session)


def outbox_gpus(ledger: Ledger) -> list[str]:
    with ledger.transaction() as session:
        return list(session.scalars(select(LeaseOutbox.gpu_uuid).order_by(LeaseOutbox.id)))


# ---------------------------------------------------------------------------- service


def test_open_end_and_list(ledger):
    with ledger.transaction() as session:
        a = open_lease(session, "acme", "gpu-1", T0, actor="ops")
        b = open_lease(session, "globex", "gpu-2", T0, T0 + HOUR, plan="valley", lease_id="g-1", actor="ops")
    assert a.lease_id == default_lease_id("acme", "gpu-1", T0) and a.end_ms is None
    assert b == Lease("g-1", "globex", "gpu-2", T0, T0 + HOUR, "valley")
    with ledger.transaction() as session:
        assert list_leases(session) == [a, b]
        assert list_leases(session, tenant_id="globex") == [b]
        assert list_leases(session, gpu_uuid="gpu-1") == [a]
        assert list_leases(session, active_at_ms=T0 + HOUR) == [a]  # b's end is exclusive
        assert list_leases(session, active_at_ms=T0 - 1) == []
        ended = end_lease(session, a.lease_id, T0 + 2 * HOUR, actor="ops")
    assert ended.end_ms == T0 + 2 * HOUR
    with ledger.transaction() as session:
        assert list_leases(session, active_at_ms=T0 + 2 * HOUR) == []
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    assert [(e.actor, e.action, e.entity_id) for e in entries][1:] == [
        ("ops", "lease.open", a.lease_id),
        ("ops", "lease.open", "g-1"),
        ("ops", "lease.end", a.lease_id),
    ]
    assert entries[2].detail == {
        "tenant_id": "globex",
        "gpu_uuid": "gpu-2",
        "start_ms": T0,
        "end_ms": T0 + HOUR,
        "plan": "valley",
        "offer_id": "test-valley",
    }
    assert outbox_gpus(ledger) == ["gpu-1", "gpu-2", "gpu-1"]


def test_repeating_an_open_or_an_end_changes_nothing(ledger):
    with ledger.transaction() as session:
        first = open_lease(session, "acme", "gpu-1", T0)
    with ledger.transaction() as session:
        assert open_lease(session, "acme", "gpu-1", T0) == first  # same deterministic id, same fields
    with ledger.transaction() as session:
        end_lease(session, first.lease_id, T0 + HOUR)
    before = counts(ledger)
    with ledger.transaction() as session:
        assert end_lease(session, first.lease_id, T0 + HOUR).end_ms == T0 + HOUR  # a retried end
    assert counts(ledger) == before == (1, 2, 2)


def test_a_change_its_audit_entry_and_its_outbox_row_commit_together(ledger):
    with pytest.raises(RuntimeError, match="boom"), ledger.transaction() as session:
        open_lease(session, "acme", "gpu-1", T0)
        assert counts_in(session) == (1, 1, 1)  # written in the caller's transaction ...
        raise RuntimeError("boom")
    assert counts(ledger) == (0, 0, 0)  # ... and gone with it
    with ledger.transaction() as session:
        open_lease(session, "acme", "gpu-1", T0)
    assert counts(ledger) == (1, 1, 1)
    with ledger.transaction() as session:
        row = session.scalars(select(LeaseOutbox)).one()
    assert (row.gpu_uuid, row.published_ms) == ("gpu-1", None)


def counts_in(session) -> tuple[int, int, int]:
    """(leases, audit entries about leases, outbox rows) in the session's transaction."""
    return tuple(
        session.scalar(select(func.count()).select_from(model).where(*where))
        for model, where in ((LeaseRowModel, ()), (AuditEntry, (AuditEntry.entity == "lease",)), (LeaseOutbox, ()))
    )


def _setup_held(session) -> None:
    open_lease(session, "acme", "gpu-1", T0, T0 + HOUR, lease_id="held-1")
    open_lease(session, "acme", "gpu-2", T0, lease_id="open-2")
    open_lease(session, "acme", "gpu-3", T0, T0 + HOUR, lease_id="ended-3")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: open_lease(s, "nobody", "gpu-9", T0), UnknownTenant, r"^unknown tenant 'nobody'$"),
        (
            lambda s: open_lease(s, "acme", "gpu-9", T0, plan="spot"),
            InvalidLease,
            r"^unknown plan 'spot': use one of on_demand, valley, interruptible, reserved$",
        ),
        (
            lambda s: open_lease(s, "acme", "gpu-9", T0, T0, lease_id="x"),
            InvalidLease,
            r"^lease x: end 2026-11-02T00:00:00Z is not after its start 2026-11-02T00:00:00Z$",
        ),
        (
            lambda s: open_lease(s, "globex", "gpu-1", T0 + HOUR - 1, lease_id="new"),
            LeaseOverlap,
            r"^lease new \[2026-11-02T00:59:59.999Z, open\) overlaps lease held-1 "
            r"\[2026-11-02T00:00:00Z, 2026-11-02T01:00:00Z\) on GPU gpu-1$",
        ),
        (
            lambda s: open_lease(s, "globex", "gpu-2", T0 + DAY, T0 + 2 * DAY, lease_id="later"),
            LeaseOverlap,
            r"^lease later .* overlaps lease open-2 \[2026-11-02T00:00:00Z, open\) on GPU gpu-2$",
        ),
        (
            lambda s: open_lease(s, "acme", "gpu-1", T0, T0 + 2 * HOUR, lease_id="held-1"),
            LeaseIdConflict,
            r"^lease held-1 exists with different fields: end 2026-11-02T01:00:00Z \(asked: 2026-11-02T02:00:00Z\)$",
        ),
        (lambda s: end_lease(s, "nope", T0), UnknownLease, r"^unknown lease 'nope'$"),
        (
            lambda s: end_lease(s, "ended-3", T0 + 2 * HOUR),
            LeaseAlreadyEnded,
            r"^lease ended-3 already ended at 2026-11-02T01:00:00Z \(asked: 2026-11-02T02:00:00Z\)$",
        ),
        (
            lambda s: end_lease(s, "open-2", T0),
            InvalidLease,
            r"^lease open-2: end 2026-11-02T00:00:00Z is not after its start 2026-11-02T00:00:00Z$",
        ),
    ],
    ids=[
        "unknown-tenant",
        "unknown-plan",
        "end-not-after-start",
        "overlap",
        "overlap-open-ended",
        "id-with-other-fields",
        "end-unknown",
        "end-already-ended",
        "end-before-start",
    ],
)
def test_each_refusal_is_one_line_and_writes_nothing(ledger, call, error, message):
    with ledger.transaction() as session:
        _setup_held(session)
    before = counts(ledger)
    with pytest.raises(error, match=message) as caught, ledger.transaction() as session:
        call(session)
    assert "\n" not in str(caught.value)
    assert counts(ledger) == before


def test_concurrent_overlapping_opens_admit_exactly_one(ledger, monkeypatch):
    """Check-then-insert under concurrency: a per-GPU advisory lock on PostgreSQL, the write
    lock taken at BEGIN on SQLite. A slow clock between the check and the insert widens the
    window in which an unguarded writer would let two overlapping leases in."""
    from billing.leases import service

    def slow_now_ms() -> int:
        time.sleep(0.2)
        return int(time.time() * 1000)

    monkeypatch.setattr(service, "now_ms", slow_now_ms)
    barrier = threading.Barrier(6)
    results: list[str] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            with ledger.transaction() as session:
                open_lease(session, "acme", "gpu-race", T0 + i, lease_id=f"race-{i}")
            results.append("opened")
        except LeaseOverlap:
            results.append("overlap")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == ["opened"] + ["overlap"] * 5
    with ledger.transaction() as session:
        assert len(list_leases(session, gpu_uuid="gpu-race")) == 1


def test_errors_belong_to_the_ledgers_families():
    assert issubclass(UnknownTenant, NotFound) and issubclass(UnknownLease, NotFound)
    assert all(issubclass(e, Conflict) for e in (LeaseOverlap, LeaseAlreadyEnded, LeaseIdConflict))


def test_back_to_back_leases_do_not_overlap(ledger):
    with ledger.transaction() as session:
        open_lease(session, "acme", "gpu-1", T0, T0 + HOUR)
        open_lease(session, "globex", "gpu-1", T0 + HOUR, T0 + 2 * HOUR)
        open_lease(session, "acme", "gpu-1", T0 - HOUR, T0)
        assert len(list_leases(session, gpu_uuid="gpu-1")) == 3


# ---------------------------------------------------------------------------- importers


CSV = """lease_id,tenant_id,gpu_uuid,start,end,plan
,acme,gpu-1,2026-11-02T00:00:00Z,2026-11-02T01:00:00Z,
l-2,globex,gpu-1,2026-11-02T02:00:00+01:00,,valley

l-3,acme,gpu-2,1793577600000,1793581200000,reserved
"""

JSONL = """{"tenant_id": "acme", "gpu_uuid": "gpu-3", "start": "2026-11-02T00:00:00", "end": 1793581200000}

{"lease_id": "j-2", "tenant_id": "globex", "gpu_uuid": "gpu-3", "start_ms": 1793581200000, "plan": "interruptible"}
"""


def test_times_iso_with_z_offset_or_none_and_integer_ms():
    assert parse_time("2026-11-02T00:00:00Z") == T0
    assert parse_time("2026-11-02T01:00:00+01:00") == T0
    assert parse_time("2026-11-02T00:00:00") == T0  # no offset: UTC
    assert parse_time("2026-11-02") == T0
    assert parse_time("2026-11-02T00:00:00.250Z") == T0 + 250
    assert parse_time(str(T0)) == T0 and parse_time(T0) == T0
    for bad in ("yesterday", "2026-11-02T00:00:00.0001Z", -1, True, 1.5):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_csv_and_jsonl_rows_carry_their_lines():
    rows = parse_csv(CSV, "a.csv")
    assert [(r.where, r.lease_id, r.start_ms, r.end_ms, r.plan) for r in rows] == [
        ("a.csv:2", None, T0, T0 + HOUR, None),
        ("a.csv:3", "l-2", T0 + HOUR, None, "valley"),
        ("a.csv:5", "l-3", T0, T0 + HOUR, "reserved"),
    ]
    rows = parse_jsonl(JSONL, "b.jsonl")
    assert [(r.where, r.lease_id, r.start_ms, r.end_ms, r.plan) for r in rows] == [
        ("b.jsonl:1", None, T0, T0 + HOUR, None),
        ("b.jsonl:3", "j-2", T0 + HOUR, None, "interruptible"),
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("f.csv", "tenant_id,gpu_uuid\nacme,g\n", r"^f\.csv:1: missing column\(s\) start$"),
        ("f.csv", "tenant_id,gpu_uuid,start,colour\n", r"^f\.csv:1: unknown column\(s\) 'colour'; known: .*$"),
        ("f.csv", "tenant_id,gpu_uuid,start\nacme,g,2026-11-02\nacme,g,soon\n", r"^f\.csv:3: start: 'soon' is not"),
        ("f.csv", "tenant_id,gpu_uuid,start\nacme,,2026-11-02\n", r"^f\.csv:2: gpu_uuid is missing$"),
        ("f.csv", "tenant_id,gpu_uuid,start\nacme,g\n", r"^f\.csv:2: 2 cells, the header has 3$"),
        ("f.csv", "", r"^f\.csv:1: empty file"),
        ("f.jsonl", '{"tenant_id": "a", "gpu_uuid": "g", "start": 0}\n{"tenant_id": ', r"^f\.jsonl:2: not JSON"),
        ("f.jsonl", "[1]\n", r"^f\.jsonl:1: expected a JSON object, got list$"),
        ("f.jsonl", '{"tenant_id": 5, "gpu_uuid": "g", "start": 0}\n', r"^f\.jsonl:1: tenant_id must be a string"),
        ("f.jsonl", '{"tenant_id": "a", "gpu_uuid": "g", "start": 1.5}\n', r"^f\.jsonl:1: start: expected a time"),
    ],
)
def test_file_errors_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(LeaseFileError, match=message.replace("f\\.", f"{tmp_path}/f\\.")) as caught:
        read_lease_file(path)
    assert "\n" not in str(caught.value)


def test_format_from_extension_or_option(tmp_path):
    path = tmp_path / "leases.txt"
    path.write_text(JSONL)
    with pytest.raises(LeaseFileError, match="cannot tell the format"):
        read_lease_file(path)
    assert len(read_lease_file(path, "jsonl")) == 2


def test_import_csv_and_jsonl_then_again_changes_nothing(ledger, tmp_path):
    (tmp_path / "a.csv").write_text(CSV)
    (tmp_path / "b.jsonl").write_text(JSONL)
    rows = read_lease_file(tmp_path / "a.csv") + read_lease_file(tmp_path / "b.jsonl")
    with ledger.transaction() as session:
        result = import_leases(session, rows, actor="importer")
    assert len(result.created) == 5 and result.unchanged == 0 and result.gpus == ("gpu-1", "gpu-2", "gpu-3")
    assert counts(ledger) == (5, 5, 3)  # an audit entry per lease, an outbox row per GPU
    with ledger.transaction() as session:
        leases = list_leases(session)
        entry = session.scalars(select(AuditEntry).where(AuditEntry.entity_id == "l-2")).one()
    assert Lease("l-2", "globex", "gpu-1", T0 + HOUR, None, "valley") in leases
    assert Lease(default_lease_id("acme", "gpu-3", T0), "acme", "gpu-3", T0, T0 + HOUR) in leases
    assert (entry.actor, entry.action, entry.detail["source"]) == ("importer", "lease.import", f"{tmp_path}/a.csv:3")
    with ledger.transaction() as session:
        again = import_leases(session, rows)
    assert (again.created, again.unchanged, again.gpus) == ((), 5, ())
    assert counts(ledger) == (5, 5, 3)


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        ("acme,gpu-9,2026-11-02T00:30Z,2026-11-02T02:00Z,", LeaseOverlap, r"^f\.csv:5: lease .* overlaps lease l-1 "),
        ("acme,gpu-5,2026-11-02T00:30Z,,", LeaseOverlap, r"^f\.csv:5: lease .* overlaps lease held-5 .* on GPU gpu-5$"),
        ("nobody,gpu-7,2026-11-02,,", UnknownTenant, r"^f\.csv:5: unknown tenant 'nobody'$"),
        ("acme,gpu-7,2026-11-02,,spot", InvalidLease, r"^f\.csv:5: unknown plan 'spot'"),
        ("acme,gpu-7,2026-11-02T01:00Z,2026-11-02T00:00Z,", InvalidLease, r"^f\.csv:5: lease .* is not after"),
    ],
    ids=["overlap-in-file", "overlap-with-held", "unknown-tenant", "unknown-plan", "end-before-start"],
)
def test_import_is_all_or_nothing_and_names_the_line(ledger, extra, error, message):
    with ledger.transaction() as session:
        open_lease(session, "acme", "gpu-5", T0, lease_id="held-5")
    before = counts(ledger)
    text = "lease_id,tenant_id,gpu_uuid,start,end,plan\n"
    text += (
        "l-1,acme,gpu-9,2026-11-02T00:00Z,2026-11-02T01:00Z,\n,acme,gpu-8,2026-11-02,,\n,globex,gpu-6,2026-11-02,,\n"
    )
    text += "," + extra + "\n"
    rows = parse_csv(text, "f.csv")
    with pytest.raises(error, match=message) as caught, ledger.transaction() as session:
        import_leases(session, rows)
    assert "\n" not in str(caught.value)
    assert counts(ledger) == before


def test_import_refuses_an_id_held_with_other_fields_in_the_db_or_earlier_in_the_file(ledger):
    with ledger.transaction() as session:
        open_lease(session, "acme", "gpu-1", T0, T0 + HOUR, lease_id="x")
    before = counts(ledger)
    rows = parse_jsonl(
        '{"lease_id": "y", "tenant_id": "acme", "gpu_uuid": "gpu-2", "start": 0, "end": 10}\n'
        '{"lease_id": "x", "tenant_id": "acme", "gpu_uuid": "gpu-1", '
        '"start": "2026-11-02", "end": "2026-11-02T02:00Z"}\n',
        "f.jsonl",
    )
    with pytest.raises(LeaseIdConflict, match=r"^f\.jsonl:2: lease x exists with different fields: end "):
        with ledger.transaction() as session:
            import_leases(session, rows)
    rows = parse_jsonl(
        '{"lease_id": "y", "tenant_id": "acme", "gpu_uuid": "gpu-2", "start": 0, "end": 10}\n'
        '{"lease_id": "y", "tenant_id": "acme", "gpu_uuid": "gpu-2", "start": 0, "end": 10}\n'
        '{"lease_id": "y", "tenant_id": "acme", "gpu_uuid": "gpu-2", "start": 0, "end": 20}\n',
        "f.jsonl",
    )
    with pytest.raises(LeaseIdConflict, match=r"^f\.jsonl:3: lease y appears at line 1 with different fields"):
        with ledger.transaction() as session:
            import_leases(session, rows)
    assert counts(ledger) == before


def test_a_failed_import_leaves_nothing_even_if_the_caller_carries_on(ledger):
    rows = parse_csv("tenant_id,gpu_uuid,start\nacme,gpu-1,0\nnobody,gpu-2,0\n", "f.csv")
    with ledger.transaction() as session:
        with pytest.raises(UnknownTenant):
            import_leases(session, rows)
        open_lease(session, "acme", "gpu-3", T0)  # the transaction goes on and commits
    with ledger.transaction() as session:
        assert [lease.gpu_uuid for lease in list_leases(session)] == ["gpu-3"]


# ---------------------------------------------------------------------------- trimming


def test_trim_keeps_what_a_worker_can_need_and_says_from_when_it_is_complete():
    leases = [
        Lease("a", "t", "g", 0, 100),
        Lease("b", "t", "g", 100, 200),
        Lease("c", "t", "g", 250, 400),
        Lease("d", "t", "g", 500, None),
    ]
    assert trim_timeline("g", leases, now_ms=1000, horizon_ms=2000) == GpuLeaseTimeline("g", leases)
    trimmed = trim_timeline("g", reversed(leases), now_ms=1000, horizon_ms=800)  # cutoff 200: a and b ended
    assert trimmed == GpuLeaseTimeline("g", leases[2:], complete_from_ms=200)
    assert trim_timeline("g", leases, now_ms=10_000, horizon_ms=0).leases == [leases[3]]  # open stays
    with pytest.raises(ValueError, match="not g"):
        trim_timeline("g", [Lease("x", "t", "h", 0, 1)], 0, 0)


def test_timeline_json_old_and_new_shapes_validate_and_parse():
    old = GpuLeaseTimeline("g", [Lease("a", "t", "g", T0, None)])
    assert b"complete_from_ms" not in old.to_json_bytes()  # untrimmed: the original bytes
    new = GpuLeaseTimeline("g", [Lease("a", "t", "g", T0, None)], complete_from_ms=T0 - DAY)
    for timeline in (old, new):
        jsonschema.validate(json.loads(timeline.to_json_bytes()), SCHEMA)
        assert parse_lease_timeline(timeline.to_json_bytes()) == timeline
    with pytest.raises(InvalidMessage, match="complete_from_ms must be >= 0"):
        parse_lease_timeline(b'{"schema_version":1,"gpu_uuid":"g","leases":[],"complete_from_ms":-1}')
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema_version": 1, "gpu_uuid": "g", "leases": [], "complete_from_ms": "x"}, SCHEMA)


def test_horizon_defaults_to_8_days_and_may_not_undercut_the_spool_age():
    assert outbox.DEFAULT_SPOOL_MAX_AGE_S == AgentConfig().spool_max_age_s  # the copy agrees with the agent
    assert outbox.lease_horizon_ms({}) == 8 * DAY
    assert outbox.lease_horizon_ms({"WATTMETER_LEASE_HORIZON_S": str(10 * 86400)}) == 10 * DAY
    with pytest.raises(InvalidHorizon, match=r"^lease horizon 518400 s is shorter than the agents' spool age limit"):
        outbox.lease_horizon_ms({"WATTMETER_LEASE_HORIZON_S": str(6 * 86400)})
    assert outbox.lease_horizon_ms({"WATTMETER_LEASE_HORIZON_S": "3600", "WATTMETER_SPOOL_MAX_AGE_S": "600"}) == HOUR
    with pytest.raises(InvalidHorizon, match="not a whole number"):
        outbox.lease_horizon_ms({"WATTMETER_LEASE_HORIZON_S": "8d"})


def hourly_year_rows(gpu: str) -> list[LeaseRow]:
    """8,760 back-to-back hourly leases over a year, alternating between two tenants."""
    start = T0 - 365 * DAY
    return [
        LeaseRow(("acme", "globex")[h % 2], gpu, start + h * HOUR, start + (h + 1) * HOUR, source="year", line=h + 1)
        for h in range(8760)
    ]


def test_a_year_of_hourly_leases_publishes_under_1_mib_and_late_samples_find_their_lease(ledger):
    gpu = "GPU-year"
    with ledger.transaction() as session:
        assert len(import_leases(session, hourly_year_rows(gpu)).created) == 8760
        full = list_leases(session, gpu_uuid=gpu)
        now = T0  # the end of the leased year
        (timeline,) = outbox.current_timelines(session, [gpu], now, outbox.lease_horizon_ms({}))
    untrimmed = GpuLeaseTimeline(gpu, full).to_json_bytes()
    encoded = timeline.to_json_bytes()
    assert len(untrimmed) > MIB  # what the issue saw: kafka-python's max_request_size refuses it
    assert len(encoded) < MIB / 16
    assert len(timeline.leases) == 8 * 24  # the leases that end after now - 8 days
    assert timeline.complete_from_ms == now - 8 * DAY
    assert timeline == trim_timeline(gpu, full, now, 8 * DAY)  # the bounded read equals trimming everything
    index = LeaseIndex()
    index.put(parse_lease_timeline(encoded))
    late = [now - 1, now - HOUR - 1, now - 7 * DAY + 1234, now - 8 * DAY]
    for ts in late:
        expected = next(lease for lease in full if lease.covers(ts))
        assert index.lease_at(gpu, ts) == expected
    assert index.lease_at(gpu, now) is None  # the year is over: idle
    assert index.boundaries(gpu, now - HOUR - 30_000, now - HOUR + 30_000) == [now - HOUR, now - HOUR]


# ---------------------------------------------------------------------------- outbox on the real broker


def timelines_on_topic(bootstrap: str, gpus: set[str], timeout_s: float = 60) -> dict[str, list[GpuLeaseTimeline]]:
    """Every timeline of each GPU (of `gpus`) on gpu.leases, oldest first, read to the end.
    The topic is shared by the whole session: each test names its GPUs after its run_id."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(GPU_LEASES, p) for p in sorted(consumer.partitions_for_topic(GPU_LEASES))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        found: dict[str, list[GpuLeaseTimeline]] = {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"could not read {GPU_LEASES} to its end"
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key is not None and record.key.decode() in gpus:
                        found.setdefault(record.key.decode(), []).append(parse_lease_timeline(record.value))
        return found
    finally:
        consumer.close()


def latest_timelines(bootstrap: str, gpus: set[str], timeout_s: float = 60) -> dict[str, GpuLeaseTimeline]:
    """The last timeline per GPU (of `gpus`) on gpu.leases: what compaction keeps."""
    return {gpu: timelines[-1] for gpu, timelines in timelines_on_topic(bootstrap, gpus, timeout_s).items()}


def closed_port() -> int:
    """A loopback port where nothing listens (bound by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.broker
def test_publish_sends_current_timelines_and_marks_exactly_what_it_read(ledger, kafka_broker, run_id, monkeypatch):
    real_producer = outbox.make_producer
    producers = []  # the real KafkaProducers publish_pending made

    def counted(*args):
        producers.append(real_producer(*args))
        return producers[-1]

    monkeypatch.setattr(outbox, "make_producer", counted)
    gpu1, gpu2 = f"gpu-1-{run_id}", f"gpu-2-{run_id}"
    with ledger.transaction() as session:
        lease = open_lease(session, "acme", gpu1, T0)
        end_lease(session, lease.lease_id, T0 + HOUR)
        other = open_lease(session, "globex", gpu2, T0)
    assert outbox.pending_count(ledger) == 3
    assert outbox.publish_pending(ledger, kafka_broker.bootstrap, 8 * DAY, T0) == 2  # one timeline per GPU
    # gpu1 had two pending rows (open, end) and got one message: its current state, not the changes
    assert timelines_on_topic(kafka_broker.bootstrap, {gpu1, gpu2}) == {
        gpu1: [GpuLeaseTimeline(gpu1, [Lease(lease.lease_id, "acme", gpu1, T0, T0 + HOUR)])],
        gpu2: [GpuLeaseTimeline(gpu2, [other])],
    }
    assert outbox.pending_count(ledger) == 0
    from kafka.errors import IllegalStateError

    with pytest.raises(IllegalStateError):  # publish_pending closed its producer
        producers[0].send(GPU_LEASES, key=gpu1.encode(), value=GpuLeaseTimeline(gpu1).to_json_bytes())
    assert outbox.publish_pending(ledger, kafka_broker.bootstrap, 8 * DAY, T0) == 0
    assert len(producers) == 1  # nothing pending: no producer at all
    assert len(timelines_on_topic(kafka_broker.bootstrap, {gpu1, gpu2})[gpu1]) == 1


@pytest.mark.broker
def test_a_failed_publish_leaves_the_rows_pending(ledger, kafka_broker, run_id):
    gpu = f"gpu-1-{run_id}"
    with ledger.transaction() as session:
        lease = open_lease(session, "acme", gpu, T0)
    nowhere = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(PublishFailed, match=rf"^cannot publish to gpu\.leases: no Kafka broker answers at {nowhere} "):
        outbox.publish_pending(ledger, nowhere, 8 * DAY, T0, bootstrap_timeout_s=2)
    assert time.monotonic() - started < 15  # the real client gave up after the bootstrap timeout, not 30 s
    assert outbox.pending_count(ledger) == 1
    with pytest.raises(InvalidHorizon):
        outbox.publish_pending(ledger, kafka_broker.bootstrap, DAY, T0)
    assert outbox.pending_count(ledger) == 1
    assert gpu not in latest_timelines(kafka_broker.bootstrap, {gpu})
    # the outbox kept the row: the next publish to a broker that answers sends it
    assert outbox.publish_pending(ledger, kafka_broker.bootstrap, 8 * DAY, T0) == 1
    assert latest_timelines(kafka_broker.bootstrap, {gpu}) == {gpu: GpuLeaseTimeline(gpu, [lease])}
    assert outbox.pending_count(ledger) == 0


@pytest.mark.broker
def test_rows_added_during_a_publish_stay_pending(pg_url, kafka_broker, run_id, monkeypatch):
    """A change committed while the publisher sends is not among the rows it read: it stays
    pending and goes out in the next round. On PostgreSQL only: on SQLite the publisher holds
    the write lock while it sends, so a change can only come after it: nothing to race."""
    ledger, other = Ledger(pg_url), Ledger(pg_url)
    gpu, late = f"gpu-1-{run_id}", f"gpu-late-{run_id}"
    sent: list[bytes] = []
    real_producer = outbox.make_producer

    class Meddling:
        """The real KafkaProducer, whose first send lets another process commit a lease first."""

        def __init__(self, producer) -> None:
            self.producer = producer

        def send(self, topic, key, value):
            if not sent:  # during the first send, another process opens a lease on another GPU
                with other.transaction() as session:
                    open_lease(session, "globex", late, T0)
            sent.append(key)
            return self.producer.send(topic, key=key, value=value)

        def __getattr__(self, name):
            return getattr(self.producer, name)

    monkeypatch.setattr(outbox, "make_producer", lambda *args: Meddling(real_producer(*args)))
    try:
        with ledger.transaction() as session:
            for tenant in ("acme", "globex"):
                add_tenant(session, tenant)
            first = open_lease(session, "acme", gpu, T0)
        assert outbox.publish_pending(ledger, kafka_broker.bootstrap, 8 * DAY, T0) == 2
        # had the first round marked every pending row, the late row would be marked and never sent
        assert sent == [gpu.encode(), late.encode()]
        assert outbox.pending_count(ledger) == 0
        with ledger.transaction() as session:
            (second,) = list_leases(session, gpu_uuid=late)
        assert latest_timelines(kafka_broker.bootstrap, {gpu, late}) == {
            gpu: GpuLeaseTimeline(gpu, [first]),
            late: GpuLeaseTimeline(late, [second]),
        }
    finally:
        other.dispose()
        ledger.dispose()


# ---------------------------------------------------------------------------- CLI


def test_cli_errors_are_one_line_exit_2(ledger, billing_db_url, tmp_path, capsys):
    db = ["--db", billing_db_url]
    cases = [
        (["open", "--tenant", "nobody", "--gpu", "g", "--start", "2026-11-02", "--no-publish"], "unknown tenant"),
        (["open", "--tenant", "acme", "--gpu", "g", "--start", "when", "--no-publish"], "--start: 'when' is not"),
        (["end", "nope", "--at", "2026-11-02", "--no-publish"], "unknown lease 'nope'"),
        (["import", str(tmp_path / "missing.csv"), "--no-publish"], "cannot read"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert lease_main(["leases", *db, *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
        assert err.startswith("wattmeter-billing leases: ")


def test_cli_open_end_list_import_without_publishing(ledger, billing_db_url, tmp_path, capsys):
    db = ["leases", "--db", billing_db_url, "--actor", "cli-test"]
    args = ["open", "--tenant", "acme", "--gpu", "g1", "--start", "2026-11-02T00:00Z", "--lease-id", "c1"]
    assert lease_main([*db, *args, "--no-publish"]) == 0
    assert lease_main([*db, "end", "c1", "--at", "2026-11-02T01:00Z", "--no-publish"]) == 0
    (tmp_path / "l.jsonl").write_text(JSONL)
    assert lease_main([*db, "import", str(tmp_path / "l.jsonl"), "--no-publish"]) == 0
    capsys.readouterr()
    assert lease_main([*db, "list", "--active-at", "2026-11-02T00:30Z", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["lease_id"], row["end_ms"]) for row in listed] == [
        ("c1", T0 + HOUR),
        (default_lease_id("acme", "gpu-3", T0), T0 + HOUR),
    ]
    assert outbox.pending_count(ledger) == 3
    with ledger.transaction() as session:
        assert {e.actor for e in session.scalars(select(AuditEntry).where(AuditEntry.entity == "lease"))} == {
            "cli-test"
        }


# ---------------------------------------------------------------------------- real broker


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "billing.leases.cli", "leases", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.broker
def test_a_crash_between_commit_and_publish_is_caught_up_by_the_next_publish(kafka_broker, run_id, tmp_path):
    url = f"sqlite:///{tmp_path}/billing.db"
    tenant, gpu1, gpu2 = f"t-{run_id}", f"GPU-{run_id}-1", f"GPU-{run_id}-2"
    ledger = Ledger(url)
    now = int(time.time() * 1000) // HOUR * HOUR
    with ledger.transaction() as session:
        add_tenant(session, tenant)
        # long over: trimmed from the published timeline, which then says it is complete from its end
        open_lease(session, tenant, gpu1, now - 30 * DAY, now - 29 * DAY, lease_id=f"old-{run_id}")
        open_offer(session, f"o-{run_id}", start_ms=now - DAY, end_ms=now + DAY, notice_ms=0, gpus=[gpu2])
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
        "WATTMETER_BILLING_DB": url,
        "WATTMETER_ACTOR": "crash-test",
    }
    env.pop("WATTMETER_FAULT", None)
    opened = run_cli(["open", "--tenant", tenant, "--gpu", gpu1, "--start", str(now - HOUR)], env)
    assert opened.returncode == 0, opened.stderr
    assert "published 1 lease timeline(s)" in opened.stdout
    lease_id = default_lease_id(tenant, gpu1, now - HOUR)
    assert latest_timelines(kafka_broker.bootstrap, {gpu1})[gpu1].leases[-1].end_ms is None

    crash = {**env, "WATTMETER_FAULT": "after-lease-commit"}
    ended = run_cli(["end", lease_id, "--at", str(now + HOUR)], crash)
    assert ended.returncode == -signal.SIGKILL, (ended.returncode, ended.stderr)
    second = run_cli(["open", "--tenant", tenant, "--gpu", gpu2, "--start", str(now), "--plan", "valley"], crash)
    assert second.returncode == -signal.SIGKILL, (second.returncode, second.stderr)
    with ledger.transaction() as session:  # both committed ...
        assert list_leases(session, gpu_uuid=gpu1)[-1].end_ms == now + HOUR
        assert len(list_leases(session, gpu_uuid=gpu2)) == 1
    assert outbox.pending_count(ledger) == 2
    topic = latest_timelines(kafka_broker.bootstrap, {gpu1, gpu2})  # ... and neither reached the topic
    assert gpu2 not in topic and topic[gpu1].leases[-1].end_ms is None

    published = run_cli(["publish"], env)
    assert published.returncode == 0, published.stderr
    assert "published 2 lease timeline(s)" in published.stdout
    assert outbox.pending_count(ledger) == 0
    topic = latest_timelines(kafka_broker.bootstrap, {gpu1, gpu2})
    with ledger.transaction() as session:
        expected = outbox.current_timelines(session, [gpu1, gpu2], int(time.time() * 1000), outbox.lease_horizon_ms())
    assert [topic[gpu1], topic[gpu2]] == expected
    assert topic[gpu1].complete_from_ms == now - 29 * DAY and len(topic[gpu1].leases) == 1
    ledger.dispose()


@pytest.mark.broker
def test_fleet_publish_leases_goes_through_the_ledger_and_its_outbox(kafka_broker, run_id, tmp_path):
    from deploy.local.fleet import publish_leases

    url = f"sqlite:///{tmp_path}/billing.db"
    gpu1, gpu2 = f"GPU-{run_id}-a", f"GPU-{run_id}-b"
    leases = [
        Lease(f"fa-{run_id}", f"new-{run_id}", gpu1, T0, T0 + HOUR),
        Lease(f"fb-{run_id}", f"new-{run_id}", gpu1, T0 + HOUR, None, "valley"),
        Lease(f"fc-{run_id}", f"other-{run_id}", gpu2, T0 + 30_000, T0 + 90_000),
    ]
    assert publish_leases(kafka_broker.bootstrap, leases, url) == 2
    ledger = Ledger(url)
    with ledger.transaction() as session:
        assert list_leases(session) == leases
        tenant = session.get(Tenant, f"new-{run_id}")
        assert (tenant.currency, tenant.timezone, tenant.tax_jurisdiction) == ("USD", "UTC", "*")
    assert outbox.pending_count(ledger) == 0
    ledger.dispose()
    topic = latest_timelines(kafka_broker.bootstrap, {gpu1, gpu2})
    assert topic[gpu1] == GpuLeaseTimeline(gpu1, leases[:2]) and topic[gpu2] == GpuLeaseTimeline(gpu2, leases[2:])
    assert publish_leases(kafka_broker.bootstrap, leases, url) == 0  # the same leases again: nothing changed


@pytest.mark.broker
def test_a_year_of_leases_goes_through_the_real_broker_to_the_workers_lease_view(kafka_broker, run_id, tmp_path):
    from streams.lease_view import LeaseView

    ledger = Ledger(f"sqlite:///{tmp_path}/billing.db")
    gpu = f"GPU-{run_id}-year"
    with ledger.transaction() as session:
        for tenant in ("acme", "globex"):
            add_tenant(session, tenant)
        import_leases(session, hourly_year_rows(gpu))
    assert outbox.publish_pending(ledger, kafka_broker.bootstrap, outbox.lease_horizon_ms({}), now_ms=T0) == 1
    view = LeaseView(kafka_broker.bootstrap)
    view.start()
    try:
        assert view.rejected == 0
        with ledger.transaction() as session:
            for ts in (T0 - 1, T0 - 3 * DAY - 17, T0 - 7 * DAY):
                (expected,) = list_leases(session, gpu_uuid=gpu, active_at_ms=ts)
                assert view.index.lease_at(gpu, ts) == expected
    finally:
        view.stop()
        ledger.dispose()
