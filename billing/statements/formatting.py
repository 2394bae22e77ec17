"""Numbers, money and units for people, in the tenant's locale (Babel). Money stays Decimal to here."""

from __future__ import annotations

from decimal import Decimal

from babel.numbers import format_currency, format_decimal

DEFAULT_LOCALE = "en_US"


def money(amount: Decimal, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """12.30 USD -> "$12.30" (en_US), "12,30 $US" (fr_FR); the currency's own minor unit."""
    return str(format_currency(amount, currency, locale=locale))


def quantity(value: Decimal | int | float, unit: str, locale: str = DEFAULT_LOCALE, places: int = 2) -> str:
    """1234.5 GPU-hour -> "1,234.50 GPU-h" (en_US), "1 234,50 GPU-h" (fr_FR)."""
    pattern = "#,##0." + "0" * places if places else "#,##0"
    return f"{format_decimal(value, format=pattern, locale=locale)} {unit}"
