"""One bound for instants (years 1970-9999, no bools) wherever a time enters the CLI and lease
files: refused with one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.cli import main as billing_main
from billing.leases.importers import parse_time
from billing.leases.service import format_ms
from tests.support.billing_fixtures import UsageWriter
from tests.support.hostile_support import BOUND, counts, make_world, refused


@pytest.fixture
def world(tmp_path: Path) -> tuple[str, UsageWriter]:
    return make_world(tmp_path)


@pytest.mark.parametrize(
    ("value", "ms"),
    [("0", 0), ("1970-01-01T00:00:00Z", 0), ("9999-12-31T23:59:59.999Z", 253_402_300_799_999), (1, 1)],
)
def test_times_at_the_bound_parse(value: str | int, ms: int):
    assert parse_time(value) == ms


@pytest.mark.parametrize(
    "value", ["9999999999999999", 9_999_999_999_999_999, "253402300800000", "-1", "1969-12-31T23:59:59Z", True, False]
)
def test_times_outside_the_bound_or_bools_are_refused(value: str | int):
    with pytest.raises(ValueError, match=f"{BOUND}|expected a time"):
        parse_time(value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "9999999999999999"], f"--start: time 9999999999999999 is {BOUND}"),
        (["--start", "1969-12-31T23:00:00Z"], f"--start: time '1969-12-31T23:00:00Z' = -3600000 is {BOUND}"),
        (["--start", "2026-11-02", "--end", "99999999999999999"], f"--end: time 99999999999999999 is {BOUND}"),
        (["--start", "true"], "is not an ISO 8601 time"),
    ],
)
def test_leases_open_outside_the_bound_writes_nothing(world: tuple[str, UsageWriter], capsys, args, message):
    db, _ = world
    before = counts(db)
    refused(
        capsys, ["leases", "--db", db, "open", "--tenant", "acme", "--gpu", "GPU-1", *args, "--no-publish"], message
    )
    assert counts(db) == before
    assert billing_main(["leases", "--db", db, "list"]) == 0  # and listing still works
    assert capsys.readouterr().out == "no leases\n"


def test_leases_end_outside_the_bound_writes_nothing(world: tuple[str, UsageWriter], capsys):
    db, _ = world
    argv = [
        "leases",
        "--db",
        db,
        "open",
        "--tenant",
        "acme",
        "--gpu",
        "GPU-1",
        "--start",
        "2026-11-02",
        "--lease-id",
        "l-1",
        "--no-publish",
    ]
    assert billing_main(argv) == 0
    before = counts(db)
    refused(capsys, ["leases", "--db", db, "end", "l-1", "--at", "9999999999999999", "--no-publish"], BOUND)
    assert counts(db) == before


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "l.csv",
            "tenant_id,gpu_uuid,start\nacme,GPU-1,2026-11-02\nacme,GPU-2,9999999999999999\n",
            f"l.csv:3: start: time 9999999999999999 is {BOUND}",
        ),
        ("l.csv", "tenant_id,gpu_uuid,start,end\nacme,GPU-1,2026-11-02,10000-01-01\n", "l.csv:2: end: '10000-01-01'"),
        (
            "l.jsonl",
            '{"tenant_id": "acme", "gpu_uuid": "GPU-1", "start": 99999999999999999999}\n',
            f"l.jsonl:1: start: time 99999999999999999999 is {BOUND}",
        ),
        ("l.jsonl", '{"tenant_id": "acme", "gpu_uuid": "GPU-1", "start": true}\n', "l.jsonl:1: start: expected a time"),
        (
            "l.jsonl",
            '{"tenant_id": "acme", "gpu_uuid": "GPU-1", "start": "1969-07-20T20:17:40Z"}\n',
            f"l.jsonl:1: start: time '1969-07-20T20:17:40Z' = -14182940000 is {BOUND}",
        ),
    ],
)
def test_lease_import_outside_the_bound_writes_nothing(world, tmp_path: Path, capsys, name, text, message):
    db, _ = world
    path = tmp_path / name
    path.write_text(text)
    before = counts(db)
    refused(capsys, ["leases", "--db", db, "import", str(path), "--no-publish"], message)
    assert counts(db) == before


def test_the_service_refuses_too_and_old_rows_still_print():
    from billing.leases.errors import InvalidLease
    from billing.leases.service import _check_fields
    from schemas.leases import Lease as LeaseContract

    with pytest.raises(InvalidLease, match=f"lease x: start 9999999999999999 is {BOUND}"):
        _check_fields(LeaseContract("x", "acme", "GPU-1", 9_999_999_999_999_999, None, "on_demand"))
    with pytest.raises(InvalidLease, match=f"lease x: end 253402300800000 is {BOUND}"):
        _check_fields(LeaseContract("x", "acme", "GPU-1", 0, 253_402_300_800_000, "on_demand"))
    assert format_ms(9_999_999_999_999_999) == "9999999999999999 ms (outside 1970..9999)"  # a row from before


def test_contract_and_credit_times_outside_the_bound_write_nothing(world: tuple[str, UsageWriter], capsys):
    db, _ = world
    before = counts(db)
    for argv in (
        ["contracts", "add", "--tenant", "acme", "--rate-card", "simple", "--from", "9999999999999999"],
        ["credits", "grant", "--tenant", "acme", "--id", "c", "--amount", "1", "--expires", "-5"],
    ):
        with pytest.raises(SystemExit) as exited:  # argparse's own refusal: usage, then the one error line
            billing_main([*argv, "--db", db])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert BOUND in err.strip().splitlines()[-1] and "Traceback" not in err
    assert counts(db) == before
