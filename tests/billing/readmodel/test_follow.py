"""The rollup follower's steps on a real lake and ledger: only the hours new files touch are rebuilt,
a step with nothing new does nothing, and every step leaves the table equal to a full rebuild."""

from __future__ import annotations

from pathlib import Path

from billing.ledger.db import Ledger
from billing.readmodel.follow import follow_step, followed_cutoff, hour_spans, new_files
from billing.readmodel.hourly import hourly_rows
from billing.usage.reader import UsageFile, read_cutoff
from tests.support.billing_fixtures import HOUR, NOV_1, UsageWriter, hourly_table, ledger_with, minutes


def test_hour_spans_and_new_files():
    assert hour_spans([3 * HOUR, HOUR, 2 * HOUR, 5 * HOUR, 2 * HOUR]) == [(HOUR, 4 * HOUR), (5 * HOUR, 6 * HOUR)]
    files = [UsageFile("a", 0, 0, 9, 0), UsageFile("b", 0, 10, 19, 0), UsageFile("c", 1, 0, 4, 0)]
    assert [f.path for f in new_files(files, {0: 10}, {0: 20, 1: 5})] == ["b", "c"]
    assert new_files(files, {0: 20, 1: 5}, {0: 20, 1: 5}) == []


def test_each_step_rebuilds_the_hours_new_files_touch(billing_db_url: str, tmp_path: Path):
    usage = UsageWriter(tmp_path / "usage")
    ledger: Ledger = ledger_with(billing_db_url)
    assert follow_step(ledger, usage.root) is None  # no manifest yet
    usage.write(minutes("acme", NOV_1 + 10 * HOUR, 90))  # 10:00-11:30
    step = follow_step(ledger, usage.root)
    assert step is not None and (step.files, step.hours) == (1, 2)
    assert follow_step(ledger, usage.root) is None  # nothing new: nothing done
    usage.write(minutes("acme", NOV_1 + 11 * HOUR + 30 * 60_000, 10))  # more of 11:00
    usage.write(minutes("globex", NOV_1 + 20 * HOUR, 5))  # and 20:00
    step = follow_step(ledger, usage.root)
    assert step is not None and (step.files, step.hours) == (2, 2)
    assert followed_cutoff(ledger) == read_cutoff(usage.root)
    rebuilt, _ = hourly_rows(usage.root, NOV_1, NOV_1 + 24 * HOUR)
    assert hourly_table(ledger) == sorted(rebuilt)
    ledger.dispose()
