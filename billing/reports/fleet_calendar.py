"""Which hours of a fleet period are valley. Pure: no SQL, no clock.

The fleet calendar is a rate card's time-of-use calendar, version by version over the window
(`calendar_spans`); its valley minutes become merged intervals (`valley_intervals`), and each whole
UTC hour of the window is VALLEY (all of it), OTHER (none of it) or SPLIT (astride a boundary, as in
a zone with a half-hour offset) by `hour_classes`. The yield report (`billing.reports.yield_report`)
counts usage by these classes.

Unlike the rater's `billing.pricing.segments.card_spans`, the first version also covers the time
before it took effect: the fleet had a valley then too, and the report prices nothing.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from billing.common.instants import ms_to_iso
from billing.pricing.calendar import TouCalendar
from billing.reports.errors import ReportError
from schemas.units import MS_PER_HOUR

VALLEY, OTHER, SPLIT = "valley", "other", "split"


@dataclass(frozen=True)
class CalendarSpan:
    """The TOU calendar of a rate card version, in force over [start_ms, end_ms)."""

    start_ms: int
    end_ms: int
    calendar: TouCalendar
    label: str  # "demo v1"


@dataclass(frozen=True)
class FleetCalendar:
    """Which minutes are valley for the fleet: a rate card's calendars over the window."""

    card: str
    spans: tuple[CalendarSpan, ...]
    valley_periods: frozenset[str]
    chosen_by: str  # why this card: "--calendar-card", "the card of most contracts (2 of 3)"

    def names_a_valley(self) -> bool:
        """Whether any of its calendars has a period named as valley."""
        return any(period in span.calendar.periods for span in self.spans for period in self.valley_periods)


def calendar_spans(
    versions: Sequence[tuple[int, int, TouCalendar]], start_ms: int, end_ms: int
) -> list[tuple[int, int, int, TouCalendar]]:
    """(start, end, version, calendar) tiling [start_ms, end_ms) from versions given as
    (effective_from_ms, version, calendar): each in force from its instant to the next one's (the
    higher version wins a tie); before the first, the first (the fleet had a valley then too)."""
    if not versions:
        return []
    latest: dict[int, tuple[int, TouCalendar]] = {}
    for effective, version, calendar in versions:
        held = latest.get(effective)
        if held is None or version > held[0]:
            latest[effective] = (version, calendar)
    instants = sorted(latest)
    out: list[tuple[int, int, int, TouCalendar]] = []
    for index, instant in enumerate(instants):
        lo = start_ms if index == 0 else max(start_ms, instant)
        hi = end_ms if index + 1 == len(instants) else min(end_ms, instants[index + 1])
        if lo < hi:
            version, calendar = latest[instant]
            out.append((lo, hi, version, calendar))
    return out


def valley_intervals(spans: Iterable[CalendarSpan], valley_periods: frozenset[str]) -> list[tuple[int, int]]:
    """The valley minutes of the spans as sorted, merged [start, end) intervals (UTC ms)."""
    pieces = sorted(
        (segment.start_ms, segment.end_ms)
        for span in spans
        for segment in span.calendar.segments(span.start_ms, span.end_ms)
        if segment.period in valley_periods
    )
    merged: list[tuple[int, int]] = []
    for lo, hi in pieces:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _covered_ms(hour: int, starts: Sequence[int], intervals: Sequence[tuple[int, int]]) -> int:
    """How much of the hour starting at `hour` the intervals (sorted, merged; `starts` their starts) cover."""
    end = hour + MS_PER_HOUR
    covered = 0
    index = max(0, bisect_right(starts, hour) - 1)
    while index < len(intervals) and intervals[index][0] < end:
        lo, hi = intervals[index]
        covered += max(0, min(hi, end) - max(lo, hour))
        index += 1
    return covered


def hour_classes(start_ms: int, end_ms: int, intervals: Sequence[tuple[int, int]]) -> dict[int, str]:
    """Each whole UTC hour of [start_ms, end_ms) -> VALLEY (all of it), OTHER (none) or SPLIT."""
    if start_ms % MS_PER_HOUR or end_ms % MS_PER_HOUR:
        raise ReportError(
            f"the window {ms_to_iso(start_ms)}..{ms_to_iso(end_ms)} is not whole UTC hours: the hourly rows "
            "cannot be cut inside an hour (choose a time zone with a whole-hour offset)",
            subject="timezone",
        )
    starts = [lo for lo, _ in intervals]
    out: dict[int, str] = {}
    for hour in range(start_ms, end_ms, MS_PER_HOUR):
        covered = _covered_ms(hour, starts, intervals)
        out[hour] = VALLEY if covered == MS_PER_HOUR else OTHER if covered == 0 else SPLIT
    return out
