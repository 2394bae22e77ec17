"""`--engine duckdb|spark` (and $WATTMETER_USAGE_ENGINE) on the commands that aggregate usage: the
same world rated and reconciled on each engine prints the same figures; an unknown engine is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from billing.cli import main as billing_main
from tests.support.hostile_support import counts, make_world, refused


def rated(tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str) -> tuple[object, object]:
    db, usage = make_world(tmp_path / engine)
    common = ["--db", db, "--usage-dir", str(usage.root), "--json", "--engine", engine]
    capsys.readouterr()
    assert billing_main(["run", "--period", "2026-11", *common]) == 0
    run = json.loads(capsys.readouterr().out)
    assert billing_main(["reconcile", "--period", "2026-11", "--no-stripe", *common]) == 0
    reconciled = json.loads(capsys.readouterr().out)
    reconciled.pop("now")  # the clock, not the usage
    return run, reconciled


@pytest.mark.spark
def test_run_and_reconcile_print_the_same_on_spark_as_on_duckdb(tmp_path: Path, capsys):
    on_duckdb, on_spark = rated(tmp_path, capsys, "duckdb"), rated(tmp_path, capsys, "spark")
    assert on_spark == on_duckdb
    assert "acme" in json.dumps(on_spark[0])  # the world's usage was rated, not an empty run


def test_an_unknown_engine_from_the_environment_is_one_line(tmp_path: Path, capsys, monkeypatch):
    db, usage = make_world(tmp_path)
    monkeypatch.setenv("WATTMETER_USAGE_ENGINE", "trino")
    before = counts(db)
    line = refused(capsys, ["run", "--period", "2026-11", "--db", db, "--usage-dir", str(usage.root)], "trino")
    assert "duckdb or spark" in line
    assert counts(db) == before
