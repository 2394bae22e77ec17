"""The valley market's terms on a rate card, and the pure rules that apply them. No I/O, no clock.

`[interruption]` — what a preemption by the owner (billing.market.preemption) costs the tenant:

    notice_s = 120                       # the notice the owner promises (AWS Spot: 2 minutes)
    free_if_preempted_within_s = 3600    # a lease preempted this soon after its start is free (AWS Spot's first hour)
    short_notice_credit_percent = "100"  # credit on a lease preempted with less notice than promised

`[sla.<plan>]` — availability promised on a plan and the credits below it (CoreWeave's 99.9 %
SLO; Voltage Park's credits capped at the month's fee):

    availability = "99.9"
    credits = [{ below = "99.9", percent = "10" }, { below = "99.0", percent = "25" },
               { below = "95.0", percent = "100" }]

The rules (docs/market.md):
- `preemption_rule`: a lease the owner ended within `free_if_preempted_within_s` of its start is
  waived (100 %); otherwise one given less notice than `notice_s` gets `short_notice_credit_percent`;
  otherwise nothing. A tenant's own end is never either (it is not a preemption).
- `availability`: 1 - unhealthy / leased over a tenant's leases of one plan in the period, exact.
- `sla_credit_percent`: the largest credit whose `below` the availability is under; none at or
  above every `below`. A credit is a percentage of the plan's charge, so never more than it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

from billing.pricing.errors import RateCardError
from schemas.leases import PLANS
from schemas.units import MS_PER_SECOND

HUNDRED = Decimal(100)
PreemptionRule = Literal["waiver", "short_notice"]


@dataclass(frozen=True, slots=True)
class Interruption:
    notice_ms: int
    free_within_ms: int = 0
    short_notice_credit_percent: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.notice_ms < 0 or self.free_within_ms < 0:
            raise RateCardError("interruption: notice_s and free_if_preempted_within_s must be >= 0")
        if not Decimal(0) <= self.short_notice_credit_percent <= HUNDRED:
            raise RateCardError("interruption.short_notice_credit_percent must be within 0..100")

    def to_dict(self) -> dict[str, Any]:
        """The TOML form (whole seconds: a card gives them in seconds)."""
        return {
            "notice_s": self.notice_ms // MS_PER_SECOND,
            "free_if_preempted_within_s": self.free_within_ms // MS_PER_SECOND,
            "short_notice_credit_percent": str(self.short_notice_credit_percent),
        }


@dataclass(frozen=True, slots=True)
class SlaCredit:
    below: Decimal  # percent availability
    percent: Decimal  # credit, percent of the plan's charge


@dataclass(frozen=True, slots=True)
class SlaTerms:
    plan: str
    availability: Decimal  # percent promised
    credits: tuple[SlaCredit, ...]

    def __post_init__(self) -> None:
        where = f"sla.{self.plan}"
        if self.plan not in PLANS:
            raise RateCardError(f"{where}: plan {self.plan!r} is not one of {', '.join(PLANS)}")
        if not Decimal(0) < self.availability <= HUNDRED:
            raise RateCardError(f"{where}.availability = {self.availability} must be within (0, 100]")
        for credit in self.credits:
            if not Decimal(0) < credit.below <= self.availability:
                raise RateCardError(f"{where}.credits: below = {credit.below} must be within (0, availability]")
            if not Decimal(0) < credit.percent <= HUNDRED:
                raise RateCardError(f"{where}.credits: percent = {credit.percent} must be within (0, 100]")

    def to_dict(self) -> dict[str, Any]:
        return {
            "availability": str(self.availability),
            "credits": [{"below": str(c.below), "percent": str(c.percent)} for c in self.credits],
        }


@dataclass(frozen=True, slots=True)
class Preemption:
    """A lease the owner ended: its start, when the notice was given and when it ended (ms, UTC)."""

    lease_id: str
    lease_start_ms: int
    noticed_ms: int
    ends_ms: int


@dataclass(frozen=True, slots=True)
class Availability:
    """A tenant's leased GPU-ms on one plan in a period, and how much of it was unhealthy (unmetered)."""

    leased_ms: int
    unhealthy_ms: int


def preemption_rule(terms: Interruption | None, preemption: Preemption) -> tuple[PreemptionRule, Decimal] | None:
    """Which rule a preemption falls under and the percent credited: ("waiver", 100) within the free
    time of the lease's start, ("short_notice", percent) with less notice than promised, else None."""
    if terms is None:
        return None
    ran = preemption.ends_ms - preemption.lease_start_ms
    if terms.free_within_ms > 0 and ran <= terms.free_within_ms:
        return "waiver", HUNDRED
    notice = preemption.ends_ms - preemption.noticed_ms
    if notice < terms.notice_ms and terms.short_notice_credit_percent > 0:
        return "short_notice", terms.short_notice_credit_percent
    return None


def availability(leased_ms: int, unhealthy_ms: int) -> Fraction:
    """1 - unhealthy / leased, exact (1 with nothing leased); unhealthy is clipped to 0..leased."""
    if leased_ms <= 0:
        return Fraction(1)
    return 1 - Fraction(min(max(unhealthy_ms, 0), leased_ms), leased_ms)


def sla_credit_percent(terms: SlaTerms | None, available: Fraction) -> Decimal:
    """The credit (percent of the plan's charge) an availability earns: the largest whose bound it is under."""
    if terms is None:
        return Decimal(0)
    earned = [c.percent for c in terms.credits if available * 100 < Fraction(c.below)]
    return max(earned, default=Decimal(0))


def parse_interruption(value: object, source: str, decimal: Any, integer: Any) -> Interruption:
    table = _table(value, "interruption", source)
    _keys(table, {"notice_s", "free_if_preempted_within_s", "short_notice_credit_percent"}, "interruption", source)
    if "notice_s" not in table:
        raise RateCardError(f"{source}: interruption.notice_s is required (seconds of notice the owner promises)")
    return Interruption(
        notice_ms=integer(table["notice_s"], "interruption.notice_s", source) * MS_PER_SECOND,
        free_within_ms=integer(table.get("free_if_preempted_within_s", 0), "free_if_preempted_within_s", source)
        * MS_PER_SECOND,
        short_notice_credit_percent=decimal(
            table.get("short_notice_credit_percent", "0"), "interruption.short_notice_credit_percent", source
        ),
    )


def parse_sla(value: object, source: str, decimal: Any) -> dict[str, SlaTerms]:
    out: dict[str, SlaTerms] = {}
    for plan, raw in _table(value, "sla", source).items():
        where = f"sla.{plan}"
        table = _table(raw, where, source)
        _keys(table, {"availability", "credits"}, where, source)
        if "availability" not in table:
            raise RateCardError(f'{source}: {where}.availability is required (a percent such as "99.9")')
        credits = table.get("credits", [])
        if not isinstance(credits, list):
            raise RateCardError(f"{source}: {where}.credits must be a list of {{ below = ..., percent = ... }}")
        tiers = []
        for number, item in enumerate(credits, start=1):
            entry = _table(item, f"{where}.credits[{number}]", source)
            _keys(entry, {"below", "percent"}, f"{where}.credits[{number}]", source)
            tiers.append(
                SlaCredit(
                    decimal(entry.get("below"), f"{where}.credits[{number}].below", source),
                    decimal(entry.get("percent"), f"{where}.credits[{number}].percent", source),
                )
            )
        try:
            out[plan] = SlaTerms(plan, decimal(table["availability"], f"{where}.availability", source), tuple(tiers))
        except RateCardError as exc:
            raise RateCardError(f"{source}: {exc}") from None
    return out


def _table(value: object, path: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RateCardError(f"{source}: {path} must be a table")
    return value


def _keys(table: dict[str, Any], allowed: set[str], path: str, source: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RateCardError(f"{source}: {path}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
