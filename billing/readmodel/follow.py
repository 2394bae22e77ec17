"""`wattmeter-billing rollup --follow`: keep `usage_hourly` up with the sink, hour by hour.

The sink makes files durable and then moves its per-partition manifest (`next_offset`). Each step
here reads the manifests (the cut-off); when they moved past what was last followed, it lists the
files that are new since (their first offset at or past the followed offset of their partition),
reads which UTC hours their records fall in, and rebuilds exactly those hours from every durable
file (`hourly.replace_hours`: a record counts once, the copy in the earliest file, idle time of
ledger leases moved to their tenant), all of them and the new followed cut-off in ONE transaction.
So a step is exact (the hours equal a full rebuild's), idempotent (a step repeated rebuilds the
same hours to the same rows), and a SIGKILL at any instant leaves either the old hours and old
cut-off or the new ones: the next start redoes the step. The followed cut-off is the `rollup_runs`
row `follow`, whose `built_ms` is what the API and portal show as "as of".

Not followed: a lease opened or moved in the ledger after its minutes were rolled up changes how
idle time is attributed without any new file; the month close's `rollup --period` rebuilds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from billing.leases.service import leases_overlapping
from billing.ledger.db import Ledger
from billing.ledger.models import RollupRun
from billing.readmodel.hourly import record_run, replace_hours
from billing.usage.errors import UsageDataError
from billing.usage.reader import PARQUET_OPTIONS, Cutoff, UsageFile, connect, list_files, read_cutoff
from lake.store import LakeLocation
from schemas.units import MS_PER_HOUR

FOLLOW_LABEL = "follow"


@dataclass(frozen=True)
class FollowStep:
    files: int  # new durable files seen
    hours: int  # UTC hours rebuilt
    rows: int  # hourly rows written for them
    cutoff: Cutoff
    tenants: tuple[str, ...] = ()  # the tenants with records in the new files


def followed_cutoff(ledger: Ledger) -> Cutoff:
    with ledger.transaction() as session:
        run = session.get(RollupRun, FOLLOW_LABEL)
        return {} if run is None else {int(p): int(o) for p, o in run.cutoff.items()}


def new_files(files: Sequence[UsageFile], followed: Cutoff, cutoff: Cutoff) -> list[UsageFile]:
    """Files made durable after `followed` and up to `cutoff`."""
    return [f for f in files if followed.get(f.partition, 0) <= f.first < cutoff.get(f.partition, 0)]


def touched(files: Sequence[UsageFile], lake: LakeLocation) -> tuple[list[int], list[str]]:
    """The UTC hours (start ms) the records of `files` fall in, and their tenants (not idle time's "")."""
    if not files:
        return [], []
    con = connect(lake)
    try:
        con.execute("SET VARIABLE paths = ?", [[f.path for f in files]])
        rows = con.execute(
            f"SELECT DISTINCT window_start_ms - window_start_ms % {MS_PER_HOUR}, tenant_id "
            f"FROM read_parquet(getvariable('paths'), {PARQUET_OPTIONS})"
        ).fetchall()
    except Exception as exc:  # duckdb.Error: a damaged or foreign file
        raise UsageDataError(f"cannot read the usage Parquet: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    return sorted({int(row[0]) for row in rows}), sorted({str(row[1]) for row in rows if row[1]})


def hour_spans(hours: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted hour starts as [lo, hi) runs of consecutive hours."""
    spans: list[tuple[int, int]] = []
    for hour in sorted(set(hours)):
        if spans and spans[-1][1] == hour:
            spans[-1] = (spans[-1][0], hour + MS_PER_HOUR)
        else:
            spans.append((hour, hour + MS_PER_HOUR))
    return spans


def follow_step(ledger: Ledger, usage_root: LakeLocation) -> FollowStep | None:
    """One step: None when the manifests have not moved since the last followed cut-off."""
    cutoff = read_cutoff(usage_root)
    followed = followed_cutoff(ledger)
    if all(cutoff.get(p, 0) <= followed.get(p, 0) for p in cutoff):
        return None
    fresh = new_files(list_files(usage_root), followed, cutoff)
    hours, tenants = touched(fresh, usage_root)
    spans = hour_spans(hours)
    rows = 0
    with ledger.transaction() as session:
        for lo, hi in spans:
            leases = leases_overlapping(session, lo, hi)
            written, _ = replace_hours(session, usage_root, lo, hi, leases, cutoff)
            rows += written
        record_run(session, FOLLOW_LABEL, cutoff, rows)
    return FollowStep(len(fresh), sum((hi - lo) // MS_PER_HOUR for lo, hi in spans), rows, cutoff, tuple(tenants))


def follow(
    ledger: Ledger,
    usage_root: LakeLocation,
    *,
    interval_s: float = 1.0,
    steps: int | None = None,
    report: Callable[[FollowStep], None] = lambda step: None,
) -> int:
    """Follow until stopped (or for `steps` polls); returns how many steps rebuilt something."""
    done = polls = 0
    while steps is None or polls < steps:
        step = follow_step(ledger, usage_root)
        polls += 1
        if step is not None:
            done += 1
            report(step)
        elif steps is None or polls < steps:
            time.sleep(interval_s)
    return done
