"""Unit rules: integers until money.

Time is integer milliseconds since the Unix epoch (UTC), durations integer ms,
energy integer millijoules (mJ), power integer milliwatts (mW), memory integer
bytes. Money is `decimal.Decimal`, never float. These helpers are the only place
where units change, so rounding happens in one known way.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MJ_PER_KWH = 3_600_000_000  # 1 kWh = 3.6 MJ = 3.6e9 mJ


def energy_mj(power_mw: int, duration_ms: int) -> int:
    """Energy of a constant power over a duration, floored to whole mJ.

    mW x ms = uJ, so divide by 1000 to get mJ.
    """
    return power_mw * duration_ms // 1000


def avg_power_mw(energy: int, duration_ms: int) -> int:
    """Average power over a duration, floored to whole mW (0 for an empty duration)."""
    if duration_ms <= 0:
        return 0
    return energy * 1000 // duration_ms


def gpu_hours(gpu_ms: int) -> Decimal:
    """Exact GPU-hours from GPU-milliseconds."""
    return Decimal(gpu_ms) / Decimal(MS_PER_HOUR)


def kwh(mj: int) -> Decimal:
    """Exact kilowatt-hours from millijoules."""
    return Decimal(mj) / Decimal(MJ_PER_KWH)


def ms_to_datetime(ts_ms: int) -> datetime:
    """A UTC datetime for an epoch-ms timestamp."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)


def datetime_to_ms(value: datetime) -> int:
    """Epoch ms for a datetime; naive datetimes are refused rather than guessed."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: wattmeter works in UTC, pass tzinfo=timezone.utc")
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def watts_to_mw(watts: float | str | Decimal) -> int:
    """Milliwatts from a watt reading such as NVML's or nvidia-smi's ("31.00"), rounded half-even."""
    return int((Decimal(str(watts)) * 1000).to_integral_value())
