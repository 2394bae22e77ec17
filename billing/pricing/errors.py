"""Errors of the pricing core. Messages are one line and name the file (or card) and the field."""

from __future__ import annotations

from billing.common.errors import BillingError


class PricingError(BillingError, ValueError):
    """Usage that cannot be priced: a missing price, an unknown currency, a misaligned boundary."""


class RateCardError(PricingError):
    """A rate card that cannot be used; the message names its source and the field."""


# Shape checks for rate-card dicts (from TOML or from the database), shared by calendar.py and
# ratecards.py. `path` is the dotted field name ("calendar.weekday.valley"), `source` the file.


def expect_table(value: object, path: str, source: str) -> dict[str, object]:
    """`value` as a table (dict with string keys), else a RateCardError naming `path`."""
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise RateCardError(f"{source}: {path} must be a table, not {type(value).__name__}")
    return value


def expect_keys(table: dict[str, object], allowed: set[str], required: set[str], path: str, source: str) -> None:
    """Refuses unknown keys (typos) and missing required ones."""
    where = f"{path}." if path else ""
    for key in sorted(table):
        if key not in allowed:
            raise RateCardError(f"{source}: {where}{key} is not a known field (known: {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in table:
            raise RateCardError(f"{source}: {where}{key} is required")


def expect_int(value: object, path: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RateCardError(f"{source}: {path} = {value!r} must be an integer")
    return value


def expect_str(value: object, path: str, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise RateCardError(f"{source}: {path} = {value!r} must be a non-empty string")
    return value
