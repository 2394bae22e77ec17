"""Money: ISO 4217 minor units and the one rounding rule (half to even, once per line).

Amounts are `Decimal` with exactly the currency's number of decimal places (JPY 0, USD 2,
BHD 3). Exact intermediate values are `fractions.Fraction`; they are rounded here and
nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction

from billing.pricing.errors import PricingError

# ISO 4217 minor units (number of decimal places) of the currencies wattmeter may invoice in.
MINOR_UNITS: dict[str, int] = {
    "AED": 2,
    "AUD": 2,
    "BHD": 3,
    "BRL": 2,
    "CAD": 2,
    "CHF": 2,
    "CLP": 0,
    "CNY": 2,
    "CZK": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "HUF": 2,
    "IDR": 2,
    "ILS": 2,
    "INR": 2,
    "IQD": 3,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "LYD": 3,
    "MXN": 2,
    "MYR": 2,
    "NOK": 2,
    "NZD": 2,
    "OMR": 3,
    "PHP": 2,
    "PLN": 2,
    "SAR": 2,
    "SEK": 2,
    "SGD": 2,
    "THB": 2,
    "TND": 3,
    "TRY": 2,
    "TWD": 2,
    "UGX": 0,
    "USD": 2,
    "VND": 0,
    "XAF": 0,
    "XOF": 0,
    "ZAR": 2,
}


def minor_units(currency: str) -> int:
    """Decimal places of a currency's minor unit; an unknown code is a PricingError."""
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        raise PricingError(f"currency {currency!r} is not a known ISO 4217 code (add it to MINOR_UNITS)") from None


def _exact(value: Fraction | Decimal | int) -> Fraction:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise PricingError(f"amount {value} is not a finite number")
        return Fraction(value)
    return Fraction(value)


def _power_of_ten(places: int) -> int:
    if places < 0:
        raise PricingError(f"decimal places must be >= 0, not {places}")
    result: int = 10**places
    return result


def round_half_even(value: Fraction | Decimal | int, places: int) -> Decimal:
    """`value` rounded to `places` decimal places, half to even, as a Decimal with exactly that exponent.

    Exact: no Decimal context (precision) is involved.
    """
    scaled = _exact(value) * _power_of_ten(places)
    quotient, remainder = divmod(scaled.numerator, scaled.denominator)  # floor division, remainder >= 0
    twice = 2 * remainder
    if twice > scaled.denominator or (twice == scaled.denominator and quotient % 2 == 1):
        quotient += 1
    return Decimal(f"{quotient}E-{places}")


def round_money(value: Fraction | Decimal | int, currency: str) -> Decimal:
    """An exact amount rounded once to the currency's minor unit, half to even (banker's rounding)."""
    return round_half_even(value, minor_units(currency))


def zero(currency: str) -> Decimal:
    """Zero with the currency's exponent (0.00 for USD, 0 for JPY, 0.000 for BHD)."""
    return Decimal(f"0E-{minor_units(currency)}")


def to_minor(amount: Decimal, currency: str) -> int:
    """An amount as an integer count of minor units (cents); refuses digits below the minor unit."""
    places = minor_units(currency)
    exact = _exact(amount) * _power_of_ten(places)
    if exact.denominator != 1:
        raise PricingError(f"amount {amount} {currency} has more than {places} decimal places")
    return exact.numerator


def from_minor(units: int, currency: str) -> Decimal:
    """An integer count of minor units as an amount with the currency's exponent."""
    return Decimal(f"{units}E-{minor_units(currency)}")


def rate_places(currency: str) -> int:
    """Places of a money rate (per GPU-hour, per kWh): two more than the currency's minor unit."""
    return minor_units(currency) + 2


def largest_remainder(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """`total` (integer minor units, any sign) shared in proportion to non-negative integer
    `weights` (sum > 0): floors first, then one unit each to the largest remainders (ties: key
    order). The parts sum to `total` exactly."""
    if any(w < 0 for w in weights.values()):
        raise PricingError("largest_remainder: weights must be >= 0")
    whole = sum(weights.values())
    if whole <= 0:
        raise PricingError("largest_remainder: the weights sum to 0")
    sign, amount = (-1, -total) if total < 0 else (1, total)
    parts: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    for key in sorted(weights):
        quotient, remainder = divmod(amount * weights[key], whole)
        parts[key] = quotient
        remainders.append((remainder, key))
    left = amount - sum(parts.values())
    for _, key in sorted(remainders, key=lambda r: (-r[0], r[1]))[:left]:
        parts[key] += 1
    return {key: sign * value for key, value in parts.items()}
