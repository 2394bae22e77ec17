"""Pure: billing periods. A period is a calendar month in the tenant's own time zone."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from billing.common.errors import PeriodError
from schemas.units import MAX_INSTANT_MS, MIN_INSTANT_MS

_PERIOD = re.compile(r"(?P<year>\d{4})-(?P<month>\d{2})")
FIRST_YEAR = 1970
LAST_PERIOD = (9999, 11)


def parse_period(text: str) -> tuple[int, int]:
    """'2026-11' -> (2026, 11), or a one-line error. Months are those of the bound for instants
    (`schemas.units.check_instant_ms`): none before 1970-01; 9999-12 is refused too, since it ends
    in the year 10000, which no datetime holds (the month's end is where its arithmetic starts)."""
    match = _PERIOD.fullmatch(text.strip())
    if not match or not 1 <= int(match["month"]) <= 12:
        raise PeriodError(f"period {text!r} does not parse: write a month as YYYY-MM, such as 2026-11")
    year, month = int(match["year"]), int(match["month"])
    if not (FIRST_YEAR, 1) <= (year, month) <= LAST_PERIOD:
        raise PeriodError(f"period {text!r} is outside the months wattmeter bills, 1970-01 .. 9999-11")
    return year, month


def period_bounds(period: str, timezone: str) -> tuple[int, int]:
    """[start, end) of the month in ms since the epoch, midnight to midnight in `timezone`; a
    one-line error for a month that reaches outside the bound for instants (east of UTC, 1970-01
    starts in 1969)."""
    year, month = parse_period(period)
    zone = ZoneInfo(timezone)
    outside = PeriodError(
        f"period {period!r} in {timezone} reaches outside 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z"
    )
    start = int(datetime(year, month, 1, tzinfo=zone).timestamp()) * 1000
    end = int(datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone).timestamp()) * 1000
    if start < MIN_INSTANT_MS or end > MAX_INSTANT_MS:
        raise outside
    return start, end


def previous_periods(period: str, count: int) -> list[str]:
    year, month = parse_period(period)
    out = []
    for _ in range(count):
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        out.append(f"{year:04d}-{month:02d}")
    return out


def period_of(ts_ms: int, timezone: str) -> str:
    local = datetime.fromtimestamp(ts_ms / 1000, ZoneInfo(timezone))
    return f"{local.year:04d}-{local.month:02d}"
