"""Unit rules: integers until money.

Time is integer milliseconds since the Unix epoch (UTC), durations integer ms,
energy integer millijoules (mJ), power integer milliwatts (mW), memory integer
bytes. Money is `decimal.Decimal`, never float. These helpers are the only place
where units change, so rounding happens in one known way.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000  # a UTC day; a local day may be 23 or 25 hours
NS_PER_MS = 1_000_000  # time.time_ns() // NS_PER_MS: epoch ms
S_PER_MINUTE = 60
S_PER_HOUR = 3_600
S_PER_DAY = 86_400
UJ_PER_MJ = 1_000  # mW x ms = uJ
MJ_PER_KWH = 3_600_000_000  # 1 kWh = 3.6 MJ = 3.6e9 mJ

# The one bound for instants, wherever a time enters (CLI, imports, API, agents' samples):
# 1970-01-01T00:00:00Z up to, not including, 10000-01-01T00:00:00Z, so every instant has a
# four-digit year and survives datetime, ISO 8601, SQL and Parquet round trips.
MIN_INSTANT_MS = 0
MAX_INSTANT_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z, exclusive


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


def check_instant_ms(ts_ms: object, what: str = "time") -> int:
    """`ts_ms` if it is an int instant in [MIN_INSTANT_MS, MAX_INSTANT_MS); ValueError (one line) otherwise.

    A bool is refused although Python counts it as an int: `true` is not a time."""
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
        raise ValueError(f"{what} must be an integer of epoch ms, not {type(ts_ms).__name__}")
    if not MIN_INSTANT_MS <= ts_ms < MAX_INSTANT_MS:
        raise ValueError(f"{what} {ts_ms} is outside 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z")
    return ts_ms


def ms_to_datetime(ts_ms: int) -> datetime:
    """A UTC datetime for an epoch-ms timestamp."""
    return _EPOCH + timedelta(milliseconds=ts_ms)  # exact: ts_ms / 1000 as a float loses the ms near year 9999


def datetime_to_ms(value: datetime) -> int:
    """Epoch ms for a datetime; naive datetimes are refused rather than guessed."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: wattmeter works in UTC, pass tzinfo=timezone.utc")
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def watts_to_mw(watts: float | str | Decimal) -> int:
    """Milliwatts from a watt reading such as NVML's or nvidia-smi's ("31.00"), rounded half-even."""
    return int((Decimal(str(watts)) * 1000).to_integral_value())
