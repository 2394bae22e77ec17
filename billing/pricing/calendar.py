"""Time of use: which minutes are valley and which are peak, in the rate card's own time zone. Pure.

A `TouCalendar` maps each local wall-clock hour of a day to a period name, in the shape of
OpenEI's utility-rate schedules (month x hour -> period, one matrix for weekdays and one for
weekends). Hours not listed are `default_period` ("peak"). Public holidays (the `holidays`
package, by country and optional subdivision) are priced as weekend days.

Hour ranges are local wall-clock hours, so a day is not always 24 hours long:

- on a 23-hour day (spring forward) the skipped hour has no length; its neighbours keep theirs;
- on a 25-hour day (fall back) the repeated hour belongs, both times, to the period of its
  wall-clock hour (America/New_York 2026-11-01: hour 1 lasts two real hours).

`segments()` walks local days and converts only the hour boundaries where the period changes
(zoneinfo, `fold=0`: a boundary inside a gap maps to the transition instant, an ambiguous
boundary to its first occurrence). Every boundary is a whole local hour, so in every real time
zone of today (offsets in whole minutes) it is a whole UTC minute, hence a usage-window edge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from billing.pricing.errors import (
    PricingError,
    RateCardError,
    expect_int,
    expect_keys,
    expect_str,
    expect_table,
)

HourRanges = tuple[tuple[int, int], ...]
Schedule = Mapping[str, HourRanges]  # period -> local hour ranges [start, end), 0..24

DEFAULT_PERIOD = "peak"
WEEKEND_DAYS = (6, 7)  # ISO weekdays: Saturday, Sunday
_PERIOD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Segment:
    """[start_ms, end_ms) of one period, epoch ms (UTC)."""

    start_ms: int
    end_ms: int
    period: str


@dataclass(frozen=True)
class MonthSchedule:
    """A month's own weekday and weekend schedules (an OpenEI month row)."""

    weekday: Schedule
    weekend: Schedule


def _to_ms(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _from_ms(ts_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ts_ms)


def _hour_table(schedule: Schedule, default_period: str, where: str) -> tuple[str, ...]:
    """The 24 local hours of a day -> period names; refuses bad ranges and overlaps."""
    hours: list[str | None] = [None] * 24
    for period in sorted(schedule):
        if not isinstance(period, str) or not _PERIOD_NAME.match(period):
            raise RateCardError(f"{where}: period name {period!r} must be a word such as valley or off_peak")
        for pair in schedule[period]:
            if (
                len(pair) != 2
                or not all(isinstance(h, int) and not isinstance(h, bool) for h in pair)
                or not 0 <= pair[0] < pair[1] <= 24
            ):
                raise RateCardError(
                    f"{where}.{period}: hour range {list(pair)!r} must be [start, end] with 0 <= start < end <= 24"
                )
            for hour in range(pair[0], pair[1]):
                if hours[hour] is not None:
                    raise RateCardError(f"{where}.{period}: hour {hour} is already in period {hours[hour]}")
                hours[hour] = period
    return tuple(default_period if period is None else period for period in hours)


def _schedule_from_table(table: tuple[str, ...], default_period: str) -> dict[str, HourRanges]:
    """The canonical schedule of an hour table: maximal runs, periods other than the default, sorted."""
    runs: dict[str, list[tuple[int, int]]] = {}
    hour = 0
    while hour < 24:
        end = hour
        while end < 24 and table[end] == table[hour]:
            end += 1
        if table[hour] != default_period:
            runs.setdefault(table[hour], []).append((hour, end))
        hour = end
    return {period: tuple(runs[period]) for period in sorted(runs)}


@dataclass(frozen=True)
class TouCalendar:
    """Local hour -> period, by month, weekday/weekend and public holiday. See the module docstring."""

    timezone: str = "UTC"
    weekday: Schedule = field(default_factory=dict)
    weekend: Schedule = field(default_factory=dict)
    months: Mapping[int, MonthSchedule] = field(default_factory=dict)
    holiday_country: str | None = None
    holiday_subdiv: str | None = None
    default_period: str = DEFAULT_PERIOD
    weekend_days: tuple[int, ...] = WEEKEND_DAYS
    # derived in __post_init__, not part of equality
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _tables: dict[tuple[int, bool], tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _holidays: holidays.HolidayBase | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise RateCardError(f"calendar.timezone = {self.timezone!r} is not an IANA time zone") from None
        if not _PERIOD_NAME.match(self.default_period):
            raise RateCardError(f"calendar.default_period = {self.default_period!r} must be a word such as peak")
        if not self.weekend_days or any(day not in range(1, 8) for day in self.weekend_days):
            raise RateCardError(
                f"calendar.weekend_days = {list(self.weekend_days)!r} must be ISO weekdays 1..7 (Monday = 1)"
            )
        base = (
            _hour_table(self.weekday, self.default_period, "calendar.weekday"),
            _hour_table(self.weekend, self.default_period, "calendar.weekend"),
        )
        tables: dict[tuple[int, bool], tuple[str, ...]] = {(0, False): base[0], (0, True): base[1]}
        months: dict[int, MonthSchedule] = {}
        for month in sorted(self.months):
            if isinstance(month, bool) or not isinstance(month, int) or not 1 <= month <= 12:
                raise RateCardError(f"calendar.months.{month} is not a month number 1..12")
            where = f"calendar.months.{month}"
            own = self.months[month]
            weekday = _hour_table(own.weekday, self.default_period, f"{where}.weekday")
            weekend = _hour_table(own.weekend, self.default_period, f"{where}.weekend")
            months[month] = MonthSchedule(
                _schedule_from_table(weekday, self.default_period), _schedule_from_table(weekend, self.default_period)
            )
            tables[(month, False)], tables[(month, True)] = weekday, weekend
        calendar: holidays.HolidayBase | None = None
        if self.holiday_country is not None:
            try:
                calendar = holidays.country_holidays(self.holiday_country, subdiv=self.holiday_subdiv)
            except NotImplementedError as exc:
                raise RateCardError(f"calendar.holidays: {exc}") from None
        elif self.holiday_subdiv is not None:
            raise RateCardError("calendar.holidays.subdiv needs a country")
        # canonical forms, so that equal calendars compare equal and hash the same
        object.__setattr__(self, "weekday", _schedule_from_table(base[0], self.default_period))
        object.__setattr__(self, "weekend", _schedule_from_table(base[1], self.default_period))
        object.__setattr__(self, "months", months)
        object.__setattr__(self, "weekend_days", tuple(sorted(set(self.weekend_days))))
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_tables", tables)
        object.__setattr__(self, "_holidays", calendar)

    # -- queries -------------------------------------------------------------------------------

    @property
    def periods(self) -> frozenset[str]:
        """Every period name this calendar can give."""
        return frozenset(name for table in self._tables.values() for name in table)

    def is_holiday(self, day: date) -> bool:
        return self._holidays is not None and day in self._holidays

    def is_weekend(self, day: date) -> bool:
        """Weekend schedule: a weekend day or a public holiday."""
        return day.isoweekday() in self.weekend_days or self.is_holiday(day)

    def hours(self, day: date) -> tuple[str, ...]:
        """The period of each of the 24 local wall-clock hours of `day`."""
        weekend = self.is_weekend(day)
        return self._tables.get((day.month, weekend)) or self._tables[(0, weekend)]

    def local_ms(self, day: date, hour: int = 0) -> int:
        """The instant of local wall-clock `hour`:00 on `day` (hour 24 is the next day's 00:00).

        A wall-clock time skipped by DST maps to the transition instant; a repeated one to its
        first occurrence (zoneinfo, fold=0).
        """
        if hour == 24:
            day, hour = day + _ONE_DAY, 0
        return _to_ms(datetime(day.year, day.month, day.day, hour, tzinfo=self._zone))

    def local_date(self, ts_ms: int) -> date:
        return _from_ms(ts_ms).astimezone(self._zone).date()

    def segments(self, start_ms: int, end_ms: int) -> list[Segment]:
        """Contiguous periods tiling [start_ms, end_ms) exactly; neighbours always differ in period."""
        if end_ms < start_ms:
            raise PricingError(f"segments: end {end_ms} is before start {start_ms}")
        out: list[Segment] = []
        cursor = start_ms
        day = self.local_date(start_ms)
        while cursor < end_ms:
            table = self.hours(day)
            hour = 0
            while hour < 24 and cursor < end_ms:
                stop = hour
                while stop < 24 and table[stop] == table[hour]:
                    stop += 1
                # pieces are [max(start, cursor), end): monotone even if a zone's rules are not
                piece_end = min(self.local_ms(day, stop), end_ms)
                if piece_end > cursor:
                    if out and out[-1].period == table[hour]:
                        out[-1] = Segment(out[-1].start_ms, piece_end, table[hour])
                    else:
                        out.append(Segment(cursor, piece_end, table[hour]))
                    cursor = piece_end
                hour = stop
            day += _ONE_DAY
        return out

    def period_at(self, ts_ms: int) -> str:
        """The period of the millisecond starting at `ts_ms`."""
        return self.segments(ts_ms, ts_ms + 1)[0].period

    # -- storage -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form; `from_dict(to_dict())` gives an equal calendar."""

        def schedule(value: Schedule) -> dict[str, list[list[int]]]:
            return {period: [list(pair) for pair in value[period]] for period in sorted(value)}

        return {
            "timezone": self.timezone,
            "default_period": self.default_period,
            "weekend_days": list(self.weekend_days),
            "weekday": schedule(self.weekday),
            "weekend": schedule(self.weekend),
            "months": {
                str(month): {"weekday": schedule(own.weekday), "weekend": schedule(own.weekend)}
                for month, own in sorted(self.months.items())
            },
            "holidays": None
            if self.holiday_country is None
            else {"country": self.holiday_country, "subdiv": self.holiday_subdiv},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> TouCalendar:
        """A calendar from its TOML table (`[calendar]`) or from `to_dict()`; errors name `source` and the field.

        A month override that gives only `weekday` (or only `weekend`) keeps the base calendar's other one.
        """
        table = expect_table(dict(data), "calendar", source)
        keys = {"timezone", "default_period", "weekend_days", "weekday", "weekend", "months", "holidays"}
        expect_keys(table, keys, {"timezone"}, "calendar", source)
        default_period = expect_str(table.get("default_period", DEFAULT_PERIOD), "calendar.default_period", source)
        weekend_days_raw = table.get("weekend_days", list(WEEKEND_DAYS))
        if not isinstance(weekend_days_raw, list):
            raise RateCardError(f"{source}: calendar.weekend_days must be a list of ISO weekdays such as [6, 7]")
        weekend_days = tuple(expect_int(day, "calendar.weekend_days", source) for day in weekend_days_raw)
        weekday = _parse_schedule(table.get("weekday", {}), "calendar.weekday", source)
        weekend = _parse_schedule(table.get("weekend", {}), "calendar.weekend", source)
        months: dict[int, MonthSchedule] = {}
        for key, value in expect_table(table.get("months", {}), "calendar.months", source).items():
            if not key.isdigit() or not 1 <= int(key) <= 12:
                raise RateCardError(f"{source}: calendar.months.{key} is not a month number 1..12")
            where = f"calendar.months.{key}"
            own = expect_table(value, where, source)
            expect_keys(own, {"weekday", "weekend"}, set(), where, source)
            months[int(key)] = MonthSchedule(
                _parse_schedule(own["weekday"], f"{where}.weekday", source) if "weekday" in own else weekday,
                _parse_schedule(own["weekend"], f"{where}.weekend", source) if "weekend" in own else weekend,
            )
        country: str | None = None
        subdiv: str | None = None
        if table.get("holidays") is not None:
            spec = expect_table(table["holidays"], "calendar.holidays", source)
            expect_keys(spec, {"country", "subdiv"}, {"country"}, "calendar.holidays", source)
            country = expect_str(spec["country"], "calendar.holidays.country", source)
            if spec.get("subdiv") is not None:
                subdiv = expect_str(spec["subdiv"], "calendar.holidays.subdiv", source)
        try:
            return cls(
                timezone=expect_str(table["timezone"], "calendar.timezone", source),
                weekday=weekday,
                weekend=weekend,
                months=months,
                holiday_country=country,
                holiday_subdiv=subdiv,
                default_period=default_period,
                weekend_days=weekend_days,
            )
        except RateCardError as exc:
            raise RateCardError(f"{source}: {exc}") from None


def _parse_schedule(value: object, path: str, source: str) -> dict[str, HourRanges]:
    table = expect_table(value, path, source)
    out: dict[str, HourRanges] = {}
    for period, ranges in table.items():
        if not isinstance(ranges, list) or not all(isinstance(pair, list) for pair in ranges):
            raise RateCardError(f"{source}: {path}.{period} must be a list of [start, end] hour ranges")
        pairs: list[tuple[int, int]] = []
        for pair in ranges:
            if len(pair) != 2:
                raise RateCardError(f"{source}: {path}.{period}: hour range {pair!r} must be [start, end]")
            pairs.append(
                (expect_int(pair[0], f"{path}.{period}", source), expect_int(pair[1], f"{path}.{period}", source))
            )
        out[period] = tuple(pairs)
    return out
