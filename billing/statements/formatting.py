"""The one formatting module: numbers, money, units and dates for people, in a locale (Babel), and the
locale a browser asks for. Money stays `Decimal` (exact ratios `Fraction`) up to here.

It lives in billing/statements (not billing/common) because the fleet formatter rounds exact ratios
with `billing.pricing.money`, a layer above billing/common; billing/statements sits below billing/web,
so the statements, the tenant portal and the operator's pages all import it.

- module functions (`money`, `price`, `rate`, `number`, `quantity`, `percent`) take the locale;
- `Formatter`: one tenant's statement or portal page (its currency and time zone);
- `FleetFormatter`: the operator's and finance's pages (many currencies, exact ratios, "–" for none).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_skeleton
from babel.numbers import format_currency, format_decimal, format_percent

from billing.pricing.money import minor_units, rate_places, round_half_even
from schemas.units import MJ_PER_KWH, MS_PER_HOUR, ms_to_datetime

DEFAULT_LOCALE = "en_US"
NONE = "–"  # what a missing ratio or rate shows


# -- the locale ------------------------------------------------------------------------------------


def _quality(params: str) -> float:
    params = params.strip()
    if not params.startswith("q="):
        return 1.0
    try:
        return float(params[2:])
    except ValueError:
        return 0.0


def negotiate_locale(accept_language: str | None, default: str = DEFAULT_LOCALE) -> str:
    """The first locale of an Accept-Language header that Babel knows ("fr-CH,fr;q=0.9" -> "fr_CH"),
    by quality; `default` when none is given or none is known."""
    if not accept_language:
        return default
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(accept_language.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = _quality(params)
        if tag and tag != "*" and quality > 0:
            weighted.append((-quality, index, tag.strip()))
    for _, _, tag in sorted(weighted):
        try:
            parsed = str(Locale.parse(tag.replace("-", "_")))
        except (UnknownLocaleError, ValueError, TypeError):
            continue
        if parsed != "root":
            return parsed
    return default


# -- numbers and money -----------------------------------------------------------------------------


def _pattern(places: int) -> str:
    return "#,##0." + "0" * places if places else "#,##0"


def money(amount: Decimal, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """12.30 USD -> "$12.30" (en_US), "12,30 $US" (fr_FR); the currency's own minor unit."""
    return str(format_currency(amount, currency, locale=locale))


def price(value: Decimal, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """A unit price with every decimal it has (0.105 stays 0.105), at least the currency's."""
    return str(format_currency(value, currency, locale=locale, decimal_quantization=False))


def rate(value: Fraction | Decimal, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """A money rate rounded (half to even) to two more places than the currency's minor unit ($1.2514)."""
    rounded = round_half_even(value, rate_places(currency))
    return str(format_currency(rounded, currency, locale=locale, currency_digits=False, decimal_quantization=False))


def number(value: Decimal | int | float, places: int = 2, locale: str = DEFAULT_LOCALE) -> str:
    """1234.5 -> "1,234.50" (en_US), "1 234,50" (fr_FR)."""
    return str(format_decimal(value, format=_pattern(places), locale=locale))


def quantity(value: Decimal | int | float, unit: str, locale: str = DEFAULT_LOCALE, places: int = 2) -> str:
    """1234.5 GPU-hour -> "1,234.50 GPU-h" (en_US), "1 234,50 GPU-h" (fr_FR)."""
    return f"{number(value, places, locale)} {unit}"


def percent(value: Decimal, locale: str = DEFAULT_LOCALE) -> str:
    """0.1234 -> "12.3%" (en_US), "12,3 %" (fr_FR)."""
    return str(format_percent(value, format="#,##0.0%", locale=locale))


# -- one tenant's page -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Formatter:
    """Numbers, money, units and dates of one tenant for one locale (Babel)."""

    locale: str
    currency: str
    timezone: str

    def money(self, amount: Decimal) -> str:
        return money(amount, self.currency, self.locale)

    def price(self, value: Decimal) -> str:
        """A unit price with every decimal it has (0.105 stays 0.105), at least the currency's."""
        return price(value, self.currency, self.locale)

    def number(self, value: Decimal | int, places: int = 2) -> str:
        return number(value, places, self.locale)

    def gpu_h(self, value: Decimal) -> str:
        return quantity(value, "GPU-h", self.locale, 2)

    def kwh(self, value: Decimal) -> str:
        return quantity(value, "kWh", self.locale, 2)

    def exact(self, value: Decimal, unit: str = "") -> str:
        """A quantity to its 6 places (an invoice line's), in the locale's digits."""
        text = self.number(value, 6)
        return f"{text} {unit}".rstrip()

    def percent(self, value: Decimal | None) -> str:
        return NONE if value is None else percent(value, self.locale)

    def local(self, ts_ms: int) -> datetime:
        return ms_to_datetime(ts_ms).astimezone(ZoneInfo(self.timezone))

    def date(self, value: dt.date | int, form: str = "medium") -> str:
        day = self.local(value).date() if isinstance(value, int) else value
        return str(format_date(day, format=form, locale=self.locale))

    def datetime(self, ts_ms: int, form: str = "medium") -> str:
        local = self.local(ts_ms)
        return str(format_datetime(local, format=form, tzinfo=local.tzinfo, locale=self.locale))

    def month(self, period: str) -> str:
        """ "November 2026", "2026年11月", "ноябрь 2026 г.": the locale's own month-and-year pattern.

        (Not the pattern "LLLL y": Babel 2.18 resolves stand-alone month names through a shared alias,
        so after a ja_JP page every locale loaded later would name its months in Japanese.)"""
        year, month = (int(p) for p in period.split("-"))
        return str(format_skeleton("yMMMM", date(year, month, 1), locale=self.locale))


# -- the fleet's pages -----------------------------------------------------------------------------


class FleetFormatter:
    """The operator's and finance's pages in one locale: money in the currency given, exact ratios
    (`Fraction`) rounded once, half to even; NONE for a ratio that has no value."""

    def __init__(self, locale: str) -> None:
        self.locale = locale

    def money(self, amount: Decimal, currency: str) -> str:
        return money(amount, currency, self.locale)

    def money_text(self, text: str, currency: str) -> str:
        """A decimal string (as the reports write money) formatted; anything else shown as it is."""
        try:
            return self.money(Decimal(text), currency)
        except (InvalidOperation, ValueError):
            return text

    def rate(self, value: Fraction | None, currency: str) -> str:
        """A money rate with two more places than the currency's minor unit ($1.2514)."""
        return NONE if value is None else rate(value, currency, self.locale)

    def per_unit(self, value: Fraction | None, currency: str) -> str:
        """Money per item (per GPU), rounded to the currency's minor unit."""
        if value is None:
            return NONE
        return self.money(round_half_even(value, minor_units(currency)), currency)

    def number(self, value: Fraction | Decimal | int | None, places: int = 2) -> str:
        return NONE if value is None else number(round_half_even(value, places), places, self.locale)

    def percent(self, value: Fraction | None) -> str:
        return NONE if value is None else percent(round_half_even(value, 4), self.locale)

    def hours(self, ms: int) -> str:
        return self.number(Fraction(ms, MS_PER_HOUR), 2)

    def kwh(self, mj: int) -> str:
        return self.number(Fraction(mj, MJ_PER_KWH), 2)
