"""Periods whose instants fall outside the bound: `run` and `statement` refuse them with one line,
exit 2, nothing written; the months at the bound still run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from billing.cli import main as billing_main
from tests.support.billing_fixtures import UsageWriter
from tests.support.hostile_support import BOUND, counts, make_world, refused


@pytest.fixture
def world(tmp_path: Path) -> tuple[str, UsageWriter]:
    return make_world(tmp_path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--period", "0000-01"], "period '0000-01' is outside the months wattmeter bills, 1970-01 .. 9999-11"),
        (["run", "--period", "9999-12"], "period '9999-12' is outside the months wattmeter bills"),
        (["run", "--period", "1969-12"], "period '1969-12' is outside the months wattmeter bills"),
        (["run", "--period", "1970-01", "--tenant", "kaisha"], f"period '1970-01' in Asia/Tokyo reaches {BOUND}"),
        (["statement", "--tenant", "acme", "--period", "0000-01"], "period '0000-01' is outside"),
        (["statement", "--tenant", "acme", "--period", "9999-12"], "period '9999-12' is outside"),
        (["statement", "--tenant", "kaisha", "--period", "1970-01", "--rollup"], f"reaches {BOUND}"),
        (["statement", "--tenant", "kaisha", "--period", "1970-01"], f"reaches {BOUND}"),
    ],
)
def test_periods_outside_the_bound_are_refused(world: tuple[str, UsageWriter], tmp_path: Path, capsys, argv, message):
    db, usage = world
    out = tmp_path / "out"
    out.mkdir()
    before = counts(db)
    refused(
        capsys,
        [*argv, "--db", db, "--usage-dir", str(usage.root), *(["--out", str(out)] if argv[0] == "statement" else [])],
        message,
    )
    assert counts(db) == before and list(out.iterdir()) == []


def test_the_months_at_the_bound_still_run(world: tuple[str, UsageWriter], capsys):
    db, usage = world
    for period in ("1970-01", "9999-11"):
        assert (
            billing_main(
                ["run", "--period", period, "--tenant", "acme", "--db", db, "--usage-dir", str(usage.root), "--json"]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["period"] == period
