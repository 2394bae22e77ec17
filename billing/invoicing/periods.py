"""Pure: billing periods. A period is a calendar month in the tenant's own time zone."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from billing.invoicing.errors import InvoicingError

_PERIOD = re.compile(r"^(?P<year>\d{4})-(?P<month>\d{2})$")


def parse_period(text: str) -> tuple[int, int]:
    """'2026-11' -> (2026, 11), or a one-line error."""
    match = _PERIOD.match(text.strip())
    if not match or not 1 <= int(match["month"]) <= 12:
        raise InvoicingError(f"period {text!r} does not parse: write a month as YYYY-MM, such as 2026-11")
    return int(match["year"]), int(match["month"])


def period_bounds(period: str, timezone: str) -> tuple[int, int]:
    """[start, end) of the month in ms since the epoch, midnight to midnight in `timezone`."""
    year, month = parse_period(period)
    zone = ZoneInfo(timezone)
    start = datetime(year, month, 1, tzinfo=zone)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    return int(start.timestamp()) * 1000, int(end.timestamp()) * 1000


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
