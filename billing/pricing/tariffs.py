"""The operator's own utility tariff: what its metered kWh cost it. Pure: no I/O, no clock.

A tariff is a TOML in the rate card's calendar format, loaded and versioned like a rate card
(`wattmeter-billing tariffs load FILE`):

    name = "utility"
    version = 1
    effective_from = "2026-01-01T05:00:00Z"
    currency = "USD"
    pue = "1.30"                      # the facility's overhead on the GPUs' metered energy
    [calendar]                        # billing.pricing.calendar, as a rate card's
    timezone = "America/New_York"
    weekday = { offpeak = [[0, 7], [22, 24]] }
    weekend = { offpeak = [[0, 24]] }
    [energy_kwh]                      # per kWh drawn from the grid, by period ("*" for the rest)
    offpeak = "0.06"
    "*" = "0.14"
    [demand]                          # optional, reported only: never part of the energy cost
    per_kw_month = "12.50"

`energy_cost` prices an hour's metered mJ: kWh = mJ / 3.6e9 x PUE, at the price of the period the
hour starts in (the hourly rows cannot be cut inside an hour; in a zone with a part-hour offset an
hour astride a boundary is priced at its start's period, and `split_hours` counts them). Exact
(`Fraction`); the caller rounds a sum once.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from billing.common.instants import ms_to_iso
from billing.pricing.calendar import TouCalendar
from billing.pricing.errors import RateCardError, expect_int, expect_keys, expect_str, expect_table
from billing.pricing.money import minor_units
from billing.pricing.ratecards import WILDCARD, _decimal, _instant
from schemas.units import MJ_PER_KWH

_KEYS = {"name", "version", "effective_from", "currency", "pue", "calendar", "energy_kwh", "demand"}


@dataclass(frozen=True)
class Tariff:
    name: str
    version: int
    effective_from_ms: int
    currency: str
    calendar: TouCalendar
    energy_kwh: Mapping[str, Decimal]  # period or "*" -> price per kWh drawn
    pue: Decimal = Decimal(1)
    demand_per_kw_month: Decimal | None = None  # reported only

    def __post_init__(self) -> None:
        try:
            minor_units(self.currency)
        except Exception as exc:  # PricingError: an unknown currency
            raise RateCardError(f"tariff {self.name}: currency: {exc}") from None
        if self.pue < 1:
            raise RateCardError(f"tariff {self.name}: pue = {self.pue} must be >= 1")
        if not self.energy_kwh:
            raise RateCardError(f"tariff {self.name}: [energy_kwh] names no price")
        for period, price in self.energy_kwh.items():
            if period != WILDCARD and period not in self.calendar.periods:
                raise RateCardError(f"tariff {self.name}: energy_kwh.{period}: not a period of its calendar")
            if price < 0:
                raise RateCardError(f"tariff {self.name}: energy_kwh.{period} = {price} is negative")

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def price(self, period: str) -> Decimal:
        for candidate in (period, WILDCARD):
            if candidate in self.energy_kwh:
                return self.energy_kwh[candidate]
        raise RateCardError(f'tariff {self.label}: no energy_kwh price for period {period!r} (nor a "*")')

    def energy_cost(self, hour_start_ms: int, energy_mj: int) -> Fraction:
        """What `energy_mj` metered in the hour starting at `hour_start_ms` cost, exactly."""
        kwh = Fraction(energy_mj, MJ_PER_KWH) * Fraction(self.pue)
        return kwh * Fraction(self.price(self.calendar.period_at(hour_start_ms)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "effective_from": ms_to_iso(self.effective_from_ms),
            "currency": self.currency,
            "pue": str(self.pue),
            "calendar": self.calendar.to_dict(),
            "energy_kwh": {period: str(price) for period, price in sorted(self.energy_kwh.items())},
        }
        if self.demand_per_kw_month is not None:
            out["demand"] = {"per_kw_month": str(self.demand_per_kw_month)}
        return out

    def content_hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class TariffSpan:
    tariff: Tariff
    start_ms: int
    end_ms: int


def tariff_from_dict(data: Mapping[str, Any], source: str) -> Tariff:
    table = expect_table(dict(data), "", source)
    expect_keys(table, _KEYS, {"name", "version", "effective_from", "currency", "calendar", "energy_kwh"}, "", source)
    raw = table["energy_kwh"]
    prices = (
        {WILDCARD: _decimal(raw, "energy_kwh", source)}
        if not isinstance(raw, dict)
        else {period: _decimal(price, f"energy_kwh.{period}", source) for period, price in raw.items()}
    )
    demand = None
    if "demand" in table:
        demand_table = expect_table(table["demand"], "demand", source)
        expect_keys(demand_table, {"per_kw_month"}, {"per_kw_month"}, "demand", source)
        demand = _decimal(demand_table["per_kw_month"], "demand.per_kw_month", source)
    try:
        return Tariff(
            name=expect_str(table["name"], "name", source),
            version=expect_int(table["version"], "version", source),
            effective_from_ms=_instant(table, source),
            currency=expect_str(table["currency"], "currency", source),
            calendar=TouCalendar.from_dict(expect_table(table["calendar"], "calendar", source), source),
            energy_kwh=prices,
            pue=_decimal(table.get("pue", "1"), "pue", source, what="factors"),
            demand_per_kw_month=demand,
        )
    except RateCardError as exc:
        message = str(exc)
        raise RateCardError(message if message.startswith(f"{source}: ") else f"{source}: {message}") from None


def parse_tariff(text: str, source: str) -> Tariff:
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise RateCardError(f"{source}: not valid TOML: {exc}") from None
    return tariff_from_dict(data, source)


def tariff_spans(versions: list[Tariff], start_ms: int, end_ms: int) -> list[TariffSpan]:
    """The version in force over each part of [start_ms, end_ms): the newest effective at each instant."""
    ordered = sorted(versions, key=lambda t: (t.effective_from_ms, t.version))
    spans: list[TariffSpan] = []
    for index, tariff in enumerate(ordered):
        lo = max(tariff.effective_from_ms, start_ms)
        hi = min(ordered[index + 1].effective_from_ms if index + 1 < len(ordered) else end_ms, end_ms)
        if hi > lo:
            spans.append(TariffSpan(tariff, lo, hi))
    return spans
