"""Rate cards: prices as exact decimals, loaded from TOML."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import tomllib

DEFAULT_CARD = Path(__file__).parent / "ratecards" / "flat.toml"


class RateCardError(ValueError):
    """A rate card that cannot be used; the message names the file and field."""


@dataclass(frozen=True)
class RateCard:
    name: str
    currency: str
    gpu_hour: Decimal
    kwh: Decimal


def _price(source: str, data: dict, field: str) -> Decimal:
    raw = data.get(field)
    if not isinstance(raw, str):
        raise RateCardError(f'{source}: {field} must be a quoted decimal string such as "2.50" (floats lose cents)')
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise RateCardError(f"{source}: {field} = {raw!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise RateCardError(f"{source}: {field} must be a finite, non-negative price")
    return value


def load_rate_card(path: Path = DEFAULT_CARD) -> RateCard:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RateCardError(f"rate card {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise RateCardError(f"{path}: not valid TOML: {exc}") from None
    currency = data.get("currency")
    if not isinstance(currency, str) or len(currency) != 3:
        raise RateCardError(f"{path}: currency must be a three-letter ISO code")
    return RateCard(
        name=str(data.get("name", Path(path).stem)),
        currency=currency.upper(),
        gpu_hour=_price(str(path), data, "gpu_hour"),
        kwh=_price(str(path), data, "kwh"),
    )
