"""Rate card versions: prices as exact decimals, loaded from TOML, stored as canonical JSON.

A rate card version says, from an instant on (`effective_from`, a whole UTC minute), what a
GPU-hour costs by (model, plan, period), what a kWh costs by period, and the commercial terms
(PUE, billing increment and minimum per lease, committed spend, discount, tax by jurisdiction).

Price lookup (`gpu_price`): the model's own table for the plan first (exact period, then "*"),
then the "*" model's table (exact period, then "*"). Energy (`energy_price`): exact period, then
"*"; a card with no `energy_kwh` at all does not bill energy. Tax (`tax_rate`): the jurisdiction,
then its parents ("US-NY" -> "US"), then "*".

Every price, rate, percentage and amount in a card is a quoted decimal string ("2.50"): a TOML
float (2.5) or integer (2) is refused, because a float cannot hold cents exactly and an integer
price is too easily a typo for one. Quantities (hours of a tier, seconds of an increment) may be
integers.

TOML shape (see billing/ratecards/*.toml)::

    name = "standard"                      version = 2
    effective_from = "2026-11-15T00:00:00Z"  currency = "USD"
    pue = "1.20"   increment_s = 1   minimum_s = 60   discount_percent = "0"   commitment = "500.00"
    [calendar]  ... (billing.pricing.calendar)
    [gpu_hour.<model or "*">.<plan>]   <period or "*"> = "2.50"
                                       <period or "*"> = { mode = "graduated" | "volume", tiers = [
                                           { up_to = "100", price = "2.00" }, { price = "1.80" }] }
    [energy_kwh]  <period or "*"> = "0.20"     (or energy_kwh = "0.15" for every period)
    [tax]         "<jurisdiction or *>" = "0.08875"   (a fraction, not a percentage)
    [interruption] and [sla.<plan>]: the valley market's terms (billing.pricing.market_terms)

`to_dict()` gives the same shape with `effective_from` in UTC ("...Z"), `increment_ms` and
`minimum_ms` in milliseconds and `commitment` null when there is none; `from_dict(to_dict())`
gives an equal card and `content_hash()` is the sha256 of its canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # requires-python >= 3.10; tomli is the same parser
    import tomli as tomllib

from billing.common.instants import ms_to_iso
from billing.pricing.calendar import TouCalendar
from billing.pricing.errors import (
    PricingError,
    RateCardError,
    expect_int,
    expect_keys,
    expect_str,
    expect_table,
)
from billing.pricing.market_terms import Interruption, SlaTerms, parse_interruption, parse_sla
from billing.pricing.money import minor_units, to_minor
from schemas.leases import PLANS
from schemas.units import MS_PER_HOUR, MS_PER_MINUTE, MS_PER_SECOND

WILDCARD = "*"
TIER_MODES = ("graduated", "volume")
RATECARDS_DIR = Path(__file__).resolve().parents[1] / "ratecards"
FLAT_CARD = RATECARDS_DIR / "flat.toml"
DEMO_CARD = RATECARDS_DIR / "demo.toml"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
TierMode = Literal["graduated", "volume"]


@dataclass(frozen=True, slots=True)
class Tier:
    """Up to `up_to_hours` GPU-hours (inclusive; None: no bound, the last tier) at `unit_price` per GPU-hour."""

    up_to_hours: Decimal | None
    unit_price: Decimal


@dataclass(frozen=True, slots=True)
class Tiered:
    """A tiered GPU-hour price. Tiers count per (card span, model, plan, period) within an invoice period.

    graduated: each hour is priced in the tier it falls in (one line per tier reached);
    volume: every hour is priced at the tier that the total reaches.
    """

    mode: TierMode
    tiers: tuple[Tier, ...]


Price = Decimal | Tiered


def key_path(*parts: str) -> str:
    """A dotted TOML path, quoting keys that are not bare ("gpu_hour."*".on_demand")."""
    return ".".join(part if _BARE_KEY.match(part) else json.dumps(part) for part in parts)


def _check_amount(value: Decimal, path: str, *, minimum: Decimal = Decimal(0), maximum: Decimal | None = None) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise RateCardError(f"{path} = {value!r} must be a finite Decimal")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise RateCardError(f"{path} = {value} must be {bound}")


@dataclass(frozen=True)
class RateCardVersion:
    """One effective-dated version of a rate card. See the module docstring."""

    name: str
    version: int
    effective_from_ms: int
    currency: str
    calendar: TouCalendar
    gpu_hour: Mapping[tuple[str, str, str], Price]  # (model or "*", plan, period or "*") -> price
    energy_kwh: Mapping[str, Decimal] = field(default_factory=dict)  # period or "*" -> price per kWh
    pue: Decimal = Decimal("1")
    increment_ms: int = MS_PER_SECOND
    minimum_ms: int = MS_PER_MINUTE
    commitment: Decimal | None = None  # minimum spend per invoice period (after discount, before tax)
    discount_percent: Decimal = Decimal("0")
    tax_rates: Mapping[str, Decimal] = field(default_factory=dict)  # jurisdiction or "*" -> fraction
    interruption: Interruption | None = None  # what a preemption by the owner costs (billing.pricing.market_terms)
    sla: Mapping[str, SlaTerms] = field(default_factory=dict)  # plan -> availability promised and credits

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RateCardError("name must be a non-empty string")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise RateCardError(f"version = {self.version!r} must be an integer >= 1")
        if self.effective_from_ms % MS_PER_MINUTE:
            raise RateCardError(
                f"effective_from = {ms_to_iso(self.effective_from_ms)} is not on a whole minute "
                "(usage windows are whole UTC minutes)"
            )
        try:
            minor_units(self.currency)
        except PricingError as exc:
            raise RateCardError(f"currency: {exc}") from None
        periods = self.calendar.periods
        for (model, plan, period), price in self.gpu_hour.items():
            path = key_path("gpu_hour", model, plan, period)
            if not isinstance(model, str) or not model:
                raise RateCardError(f"{path}: model must be a non-empty string")
            if plan not in PLANS:
                raise RateCardError(f"{path}: plan {plan!r} is not one of {', '.join(PLANS)}")
            if period != WILDCARD and period not in periods:
                raise RateCardError(f"{path}: period {period!r} is not in the calendar ({', '.join(sorted(periods))})")
            if isinstance(price, Tiered):
                self._check_tiers(price, path)
            else:
                _check_amount(price, path)
        for period, price in self.energy_kwh.items():
            if period != WILDCARD and period not in periods:
                raise RateCardError(
                    f"{key_path('energy_kwh', period)}: period {period!r} is not in the calendar "
                    f"({', '.join(sorted(periods))})"
                )
            _check_amount(price, key_path("energy_kwh", period))
        _check_amount(self.pue, "pue", minimum=Decimal(1))
        if self.increment_ms < 1 or self.minimum_ms < 0:
            raise RateCardError(f"increment ({self.increment_ms} ms) must be >= 1 ms and minimum >= 0")
        if self.commitment is not None:
            _check_amount(self.commitment, "commitment")
            try:
                to_minor(self.commitment, self.currency)
            except PricingError as exc:
                raise RateCardError(f"commitment: {exc}") from None
        _check_amount(self.discount_percent, "discount_percent", maximum=Decimal(100))
        for jurisdiction, rate in self.tax_rates.items():
            if not isinstance(jurisdiction, str) or not jurisdiction:
                raise RateCardError(f"tax: jurisdiction {jurisdiction!r} must be a non-empty string")
            # a fraction: 0.08875, not 8.875 (a percentage written by mistake would be refused here)
            _check_amount(rate, key_path("tax", jurisdiction), maximum=Decimal(1))

    @staticmethod
    def _check_tiers(price: Tiered, path: str) -> None:
        if price.mode not in TIER_MODES:
            raise RateCardError(f"{path}.mode = {price.mode!r} must be one of {', '.join(TIER_MODES)}")
        if not price.tiers:
            raise RateCardError(f"{path}.tiers must have at least one tier")
        previous = Decimal(0)
        for number, tier in enumerate(price.tiers, start=1):
            where = f"{path}.tiers[{number}]"
            _check_amount(tier.unit_price, f"{where}.price")
            last = number == len(price.tiers)
            if tier.up_to_hours is None:
                if not last:
                    raise RateCardError(f"{where}.up_to is missing: only the last tier has no bound")
                continue
            if last:
                raise RateCardError(f"{where}.up_to = {tier.up_to_hours}: the last tier must have no bound")
            _check_amount(tier.up_to_hours, f"{where}.up_to")
            if tier.up_to_hours <= previous:
                raise RateCardError(f"{where}.up_to = {tier.up_to_hours} must be above the previous bound {previous}")
            if (Fraction(tier.up_to_hours) * MS_PER_HOUR).denominator != 1:
                raise RateCardError(f"{where}.up_to = {tier.up_to_hours} hours is not a whole number of milliseconds")
            previous = tier.up_to_hours

    # -- lookups -------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def gpu_price(self, model: str, plan: str, period: str) -> Price:
        """The GPU-hour price: the model's own table (period, then "*"), then the "*" model's."""
        for candidate_model in (model, WILDCARD):
            for candidate_period in (period, WILDCARD):
                price = self.gpu_hour.get((candidate_model, plan, candidate_period))
                if price is not None:
                    return price
        raise PricingError(
            f"rate card {self.label}: no gpu_hour price for model {model!r}, plan {plan!r}, period {period!r} "
            f'(nor a "*" default): add {key_path("gpu_hour", WILDCARD, plan, period)}'
        )

    @property
    def bills_energy(self) -> bool:
        return bool(self.energy_kwh)

    def energy_price(self, period: str) -> Decimal:
        """The price per kWh (after PUE) in `period`: exact period, then "*"."""
        for candidate in (period, WILDCARD):
            price = self.energy_kwh.get(candidate)
            if price is not None:
                return price
        raise PricingError(f'rate card {self.label}: no energy_kwh price for period {period!r} (nor a "*" default)')

    def tax_rate(self, jurisdiction: str) -> Decimal:
        """The tax rate (a fraction) of a jurisdiction: exact, then its parents ("US-NY" -> "US"), then "*"."""
        parts = jurisdiction.split("-")
        for length in range(len(parts), 0, -1):
            rate = self.tax_rates.get("-".join(parts[:length]))
            if rate is not None:
                return rate
        rate = self.tax_rates.get(WILDCARD)
        if rate is None:
            raise PricingError(
                f'rate card {self.label}: no tax rate for jurisdiction {jurisdiction!r} and no "*" default in [tax]'
            )
        return rate

    # -- storage -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form (Decimals as strings); `from_dict(to_dict())` gives an equal card."""
        gpu_hour: dict[str, dict[str, dict[str, Any]]] = {}
        for (model, plan, period), price in sorted(self.gpu_hour.items()):
            gpu_hour.setdefault(model, {}).setdefault(plan, {})[period] = _price_to_json(price)
        return {
            "name": self.name,
            "version": self.version,
            "effective_from": ms_to_iso(self.effective_from_ms),
            "currency": self.currency,
            "pue": str(self.pue),
            "increment_ms": self.increment_ms,
            "minimum_ms": self.minimum_ms,
            "commitment": None if self.commitment is None else str(self.commitment),
            "discount_percent": str(self.discount_percent),
            "calendar": self.calendar.to_dict(),
            "gpu_hour": gpu_hour,
            "energy_kwh": {period: str(price) for period, price in sorted(self.energy_kwh.items())},
            "tax": {jurisdiction: str(rate) for jurisdiction, rate in sorted(self.tax_rates.items())},
            # the market's terms only when the card has them: an older card's JSON, and hash, are unchanged
            **({"interruption": self.interruption.to_dict()} if self.interruption is not None else {}),
            **({"sla": {plan: terms.to_dict() for plan, terms in sorted(self.sla.items())}} if self.sla else {}),
        }

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def content_hash(self) -> str:
        """sha256 (hex) of the canonical JSON: what the database stores next to the card."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "rate card") -> RateCardVersion:
        """A card from parsed TOML or from `to_dict()`; errors are one line naming `source` and the field."""
        return _card_from_dict(dict(data), source)


def _price_to_json(price: Price) -> str | dict[str, Any]:
    if isinstance(price, Tiered):
        tiers: list[dict[str, str]] = [
            {"price": str(tier.unit_price)}
            if tier.up_to_hours is None
            else {"up_to": str(tier.up_to_hours), "price": str(tier.unit_price)}
            for tier in price.tiers
        ]
        return {"mode": price.mode, "tiers": tiers}
    return str(price)


# -- parsing -----------------------------------------------------------------------------------


_EXAMPLES = {
    "prices": '"2.50"',
    "tax rates": '"0.08875"',
    "factors": '"1.20"',
    "percentages": '"10"',
    "amounts": '"500.00"',
    "tier bounds": '"100"',
}


def _decimal(value: object, path: str, source: str, what: str = "prices") -> Decimal:
    """A quoted decimal string; floats and integers are refused with a one-line reason."""
    example = _EXAMPLES.get(what, '"2.50"')
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RateCardError(f"{source}: {path} = {value!r} must be a quoted decimal string such as {example}")
    if isinstance(value, float):
        raise RateCardError(
            f"{source}: {path} = {value!r} is a float: write {what} as quoted decimal strings such as {example}"
        )
    if isinstance(value, int):
        raise RateCardError(
            f"{source}: {path} = {value!r} is an integer: write {what} as quoted decimal strings such as {example}"
        )
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise RateCardError(f"{source}: {path} = {value!r} is not a decimal number") from None
    if not number.is_finite():
        raise RateCardError(f"{source}: {path} = {value!r} is not a finite number")
    return number


def _percent(value: object, path: str, source: str) -> Decimal:
    return _decimal(value, path, source, what="percentages")


def _hours(value: object, path: str, source: str) -> Decimal:
    """A tier bound in GPU-hours: an integer or a quoted decimal string (not a float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    return _decimal(value, path, source, what="tier bounds")


def _instant(data: dict[str, object], source: str) -> int:
    if "effective_from" not in data:
        raise RateCardError(f'{source}: effective_from is required (a UTC instant such as "2026-11-01T00:00:00Z")')
    raw = data["effective_from"]
    value: datetime
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RateCardError(f"{source}: effective_from = {raw!r} is not an ISO 8601 instant") from None
    elif isinstance(raw, date):
        raise RateCardError(f"{source}: effective_from = {raw} needs a time and an offset, such as {raw}T00:00:00Z")
    else:
        raise RateCardError(
            f"{source}: effective_from = {raw!r} must be an ISO 8601 instant such as 2026-11-01T00:00:00Z"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise RateCardError(f"{source}: effective_from = {raw} has no UTC offset: add Z or +hh:mm")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _duration_ms(data: dict[str, object], name: str, default_ms: int, source: str) -> int:
    seconds, millis = f"{name}_s", f"{name}_ms"
    if seconds in data and millis in data:
        raise RateCardError(f"{source}: give {seconds} or {millis}, not both")
    if seconds in data:
        return expect_int(data[seconds], seconds, source) * MS_PER_SECOND
    if millis in data:
        return expect_int(data[millis], millis, source)
    return default_ms


def _price(value: object, path: str, source: str) -> Price:
    if not isinstance(value, dict):
        return _decimal(value, path, source)
    table = expect_table(value, path, source)
    expect_keys(table, {"mode", "tiers"}, {"mode", "tiers"}, path, source)
    mode = table["mode"]
    if mode not in TIER_MODES:
        raise RateCardError(f"{source}: {path}.mode = {mode!r} must be one of {', '.join(TIER_MODES)}")
    raw_tiers = table["tiers"]
    if not isinstance(raw_tiers, list) or not raw_tiers:
        raise RateCardError(f"{source}: {path}.tiers must be a non-empty list of {{ up_to = ..., price = ... }}")
    tiers: list[Tier] = []
    for number, raw in enumerate(raw_tiers, start=1):
        where = f"{path}.tiers[{number}]"
        tier = expect_table(raw, where, source)
        expect_keys(tier, {"up_to", "price"}, {"price"}, where, source)
        bound = tier.get("up_to")
        tiers.append(
            Tier(
                None if bound is None else _hours(bound, f"{where}.up_to", source),
                _decimal(tier["price"], f"{where}.price", source),
            )
        )
    return Tiered("graduated" if mode == "graduated" else "volume", tuple(tiers))


_CARD_KEYS = {
    "name",
    "version",
    "effective_from",
    "currency",
    "pue",
    "increment_s",
    "increment_ms",
    "minimum_s",
    "minimum_ms",
    "commitment",
    "discount_percent",
    "calendar",
    "gpu_hour",
    "energy_kwh",
    "tax",
    "interruption",
    "sla",
}


def _card_from_dict(data: dict[str, Any], source: str) -> RateCardVersion:
    table = expect_table(data, "", source)
    expect_keys(
        table, _CARD_KEYS, {"name", "version", "effective_from", "currency", "calendar", "gpu_hour"}, "", source
    )
    gpu_hour: dict[tuple[str, str, str], Price] = {}
    for model, plans in expect_table(table["gpu_hour"], "gpu_hour", source).items():
        for plan, periods in expect_table(plans, key_path("gpu_hour", model), source).items():
            for period, price in expect_table(periods, key_path("gpu_hour", model, plan), source).items():
                gpu_hour[(model, plan, period)] = _price(price, key_path("gpu_hour", model, plan, period), source)
    energy_raw = table.get("energy_kwh", {})
    energy: dict[str, Decimal] = {}
    if isinstance(energy_raw, dict):
        for period, price in expect_table(energy_raw, "energy_kwh", source).items():
            energy[period] = _decimal(price, key_path("energy_kwh", period), source)
    else:
        energy[WILDCARD] = _decimal(energy_raw, "energy_kwh", source)
    tax = {
        jurisdiction: _decimal(rate, key_path("tax", jurisdiction), source, what="tax rates")
        for jurisdiction, rate in expect_table(table.get("tax", {}), "tax", source).items()
    }
    commitment = table.get("commitment")
    currency = expect_str(table["currency"], "currency", source)
    try:
        return RateCardVersion(
            name=expect_str(table["name"], "name", source),
            version=expect_int(table["version"], "version", source),
            effective_from_ms=_instant(table, source),
            currency=currency,
            calendar=TouCalendar.from_dict(expect_table(table["calendar"], "calendar", source), source),
            gpu_hour=gpu_hour,
            energy_kwh=energy,
            pue=_decimal(table.get("pue", "1"), "pue", source, what="factors"),
            increment_ms=_duration_ms(table, "increment", MS_PER_SECOND, source),
            minimum_ms=_duration_ms(table, "minimum", MS_PER_MINUTE, source),
            commitment=None if commitment is None else _decimal(commitment, "commitment", source, what="amounts"),
            discount_percent=_decimal(table.get("discount_percent", "0"), "discount_percent", source, "percentages"),
            tax_rates=tax,
            interruption=(
                None
                if "interruption" not in table
                else parse_interruption(table["interruption"], source, _percent, expect_int)
            ),
            sla=parse_sla(table.get("sla", {}), source, _percent),
        )
    except RateCardError as exc:
        message = str(exc)
        raise RateCardError(message if message.startswith(f"{source}: ") else f"{source}: {message}") from None


def parse_rate_card(text: str, source: str) -> RateCardVersion:
    """A card from TOML text; `source` (a file name) is what error messages name. A leading byte
    order mark (as some Windows editors write) is not part of the TOML and is dropped."""
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise RateCardError(f"{source}: not valid TOML: {exc}") from None
    return _card_from_dict(data, source)


def read_rate_card_text(path: str | Path) -> str:
    """The text of a TOML rate card file (the one place in billing.pricing that reads a file):
    UTF-8, as TOML is, with or without a byte order mark; anything else is a one-line error."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RateCardError(f"rate card {path} does not exist") from None
    except OSError as exc:
        raise RateCardError(f"rate card {path} cannot be read: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RateCardError(
            f"rate card {path} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}): save it as UTF-8"
        ) from None


def load_rate_card(path: str | Path) -> RateCardVersion:
    """A card from a TOML file."""
    return parse_rate_card(read_rate_card_text(path), str(path))
