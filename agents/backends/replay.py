"""Replay a recorded GPU trace as if it were NVML.

Two CSV shapes are read, columns identified by their header in any order:
- `nvidia-smi --query-gpu=timestamp,uuid,name,power.draw,utilization.gpu,... --format=csv`:
  header `timestamp, uuid, name, power.draw [W], utilization.gpu [%], ...`, values with
  units (`31.00 W`, `0 %`, `1024 MiB`), `[N/A]` / `[Not Supported]` for missing values,
  and local timestamps without a zone (`2026/11/02 10:15:01.123`, taken as UTC unless
  `tz_offset_minutes` says otherwise);
- a simple form: `timestamp,gpu_uuid,power_w,util_gpu_pct[,energy_mj][,model]`, with ISO
  timestamps or epoch milliseconds.

Rows become ticks (all GPUs at one time): a new tick starts when a GPU already seen in
the current tick appears again, or when a row is more than `TICK_SPREAD_MS` after the
tick's first row (nvidia-smi stamps each GPU's row a few ms apart, so rows are not
grouped by identical timestamps). A tick's time is its first row's.

Energy: a recorded energy column is passed through (a counter that goes backwards is
flagged `counter_reset`). Without one, the cumulative counter is the trapezoid integral
of power over each GPU's own row times, kept exactly in integers (the running sum of
(p1 + p2) x dt, i.e. twice the energy in micro-joules, so no sub-mJ remainder is ever
lost) and reported floored to whole mJ. A row without power keeps the counter where it
was; the next row with power integrates across the gap.

Pacing is the sampler's (`Sampler.replay`): tick i is due (tick_ts - first_ts) / speed
after the start; speed 0 means as fast as possible.

Any unreadable row raises `TraceError` naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from agents.backends.errors import TraceError
from schemas.samples import GpuReading
from schemas.units import datetime_to_ms, watts_to_mw

MIB = 1024**2
TICK_SPREAD_MS = 500  # rows of one tick lie within this much of the tick's first row
_EPOCH_MS_MIN = 10**11  # epoch-ms values below this (before 1973) are surely epoch seconds
_MISSING = {
    "",
    "[n/a]",
    "n/a",
    "[not supported]",
    "not supported",
    "[unknown error]",
    "[gpu is lost]",
    "[insufficient permissions]",
    "[gpu requires reset]",
}
_COLUMNS: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "time", "ts", "ts_ms"),
    "gpu": ("uuid", "gpu_uuid", "gpu", "gpu_id", "pci.bus_id", "index"),
    "model": ("name", "model"),
    "power": ("power.draw [w]", "power.draw", "power_w", "power.draw.instant [w]", "power.draw.average [w]"),
    "util_gpu": ("utilization.gpu [%]", "utilization.gpu", "util_gpu_pct", "util"),
    "util_mem": ("utilization.memory [%]", "utilization.memory", "util_mem_pct"),
    "mem_used": ("memory.used [mib]", "memory.used"),
    "mem_total": ("memory.total [mib]", "memory.total"),
    "temperature": ("temperature.gpu", "temperature_c"),
    "energy": ("energy_mj", "total_energy_consumption [mj]"),
}


def _find_columns(header: list[str], where: str) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    found: dict[str, int] = {}
    for key, aliases in _COLUMNS.items():
        for alias in aliases:
            if alias in names:
                found[key] = names.index(alias)
                break
    missing = [k for k in ("timestamp", "gpu", "power") if k not in found]
    if missing:
        raise TraceError(f"{where}: header has no {', '.join(missing)} column (got: {', '.join(names)})")
    return found


def _number(text: str) -> str | None:
    value = text.strip()
    if value.lower() in _MISSING:
        return None
    for unit in (" W", " %", " MiB", " mJ", " C", "W", "%", "MiB", "mJ"):
        if value.endswith(unit):
            return value[: -len(unit)].strip()
    return value


def _timestamp(text: str, tz: timezone) -> int:
    value = text.strip()
    if value.isdigit():
        if int(value) < _EPOCH_MS_MIN:
            raise ValueError(f"timestamp {value} looks like epoch seconds; epoch timestamps must be in ms")
        return int(value)
    for fmt in ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S"):
        try:
            return datetime_to_ms(datetime.strptime(value, fmt).replace(tzinfo=tz))
        except ValueError:
            pass
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return datetime_to_ms(parsed if parsed.tzinfo else parsed.replace(tzinfo=tz))


def _row_reading(row: list[str], cols: dict[str, int]) -> tuple[int | None, GpuReading]:
    def field(key: str) -> str | None:
        return _number(row[cols[key]]) if key in cols else None

    def integer(key: str, scale: int = 1) -> int | None:
        text = field(key)  # exact: Decimal, not float, so large counters keep every mJ
        return None if text is None else int((Decimal(text) * scale).to_integral_value())

    power = field("power")
    reading = GpuReading(
        gpu_uuid=row[cols["gpu"]].strip(),
        model=(row[cols["model"]].strip() if "model" in cols else ""),
        power_mw=watts_to_mw(power) if power is not None else None,
        util_gpu_pct=integer("util_gpu"),
        util_mem_pct=integer("util_mem"),
        mem_used_bytes=integer("mem_used", MIB),
        mem_total_bytes=integer("mem_total", MIB),
        temperature_c=integer("temperature"),
    )
    return integer("energy"), reading


def _rows(path: Path, tz: timezone) -> Iterator[tuple[str, int, int | None, bool, GpuReading]]:
    """Per data row: ("file:line", ts_ms, energy from the trace, whether the trace has an
    energy column, reading)."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise TraceError(f"cannot open trace {path}: {exc.strerror}") from None
    with handle:
        rows = csv.reader(handle, skipinitialspace=True)
        line_no = 1
        try:
            header = next(rows, None)
            if header is None:
                raise TraceError(f"{path}: empty trace (no header line)")
            cols = _find_columns(header, str(path))
            has_energy = "energy" in cols
            for row in rows:
                line_no = rows.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                where = f"{path}:{line_no}"
                if len(row) < len(header):
                    raise TraceError(f"{where}: {len(row)} values, the header has {len(header)}")
                try:
                    ts = _timestamp(row[cols["timestamp"]], tz)
                    energy, reading = _row_reading(row, cols)
                except (ValueError, ArithmeticError) as exc:
                    raise TraceError(f"{where}: cannot read this row ({exc})") from None
                if not reading.gpu_uuid:
                    raise TraceError(f"{where}: empty GPU id")
                yield where, ts, energy, has_energy, reading
        except csv.Error as exc:
            raise TraceError(f"{path}:{rows.line_num}: not valid CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise TraceError(f"{path}: after line {line_no}: not UTF-8 text ({exc.reason})") from None


class _Integrator:
    """Per-GPU trapezoid integral of power, exact: twice the energy in micro-joules."""

    def __init__(self) -> None:
        self.twice_uj: dict[str, int] = {}
        self.last: dict[str, tuple[int, int]] = {}  # gpu -> (row ts, power mW)

    def add(self, reading: GpuReading, ts: int, where: str) -> int | None:
        gpu = reading.gpu_uuid
        if reading.power_mw is None:
            return self.twice_uj[gpu] // 2000 if gpu in self.twice_uj else None
        previous = self.last.get(gpu)
        total = self.twice_uj.get(gpu, 0)
        if previous is not None:
            if ts < previous[0]:
                raise TraceError(f"{where}: timestamp goes back in time for {gpu}")
            total += (previous[1] + reading.power_mw) * (ts - previous[0])  # mW x ms = uJ; (p1 + p2) is 2 x mean
        self.twice_uj[gpu] = total
        self.last[gpu] = (ts, reading.power_mw)
        return total // 2000  # 2 x uJ -> mJ, floored (the remainder stays in the running total)


def trapezoid_energy_mj(path: Path, tz_offset_minutes: int = 0) -> dict[str, int]:
    """Each GPU's trapezoid-integrated energy over the whole trace in whole mJ, from the power
    column alone (an energy column, if any, is ignored)."""
    integrator = _Integrator()
    for where, ts, _energy, _has, reading in _rows(Path(path), timezone(timedelta(minutes=tz_offset_minutes))):
        integrator.add(reading, ts, where)
    return {gpu: twice // 2000 for gpu, twice in integrator.twice_uj.items()}


class ReplayBackend:
    """A trace replayed tick by tick; `read()` returns the next tick's readings."""

    def __init__(self, path: Path, speed: float = 1.0, tz_offset_minutes: int = 0) -> None:
        if not speed >= 0:
            raise ValueError(f"speed must be >= 0 (0: as fast as possible), not {speed!r}")
        self.path = Path(path)
        self.speed = speed
        self._ticks = self._load(timezone(timedelta(minutes=tz_offset_minutes)))
        self._next = 0

    def _load(self, tz: timezone) -> list[tuple[int, list[GpuReading]]]:
        ticks: list[tuple[int, list[GpuReading]]] = []
        integrator = _Integrator()
        last_energy: dict[str, int] = {}
        current: list[GpuReading] = []
        tick_ts = 0
        for where, ts, energy, has_energy, reading in _rows(self.path, tz):
            if not has_energy:
                energy = integrator.add(reading, ts, where)
            elif energy is not None:  # a recorded counter that starts again is a reset, as NVML's would be
                reading.counter_reset = energy < last_energy.get(reading.gpu_uuid, energy)
                last_energy[reading.gpu_uuid] = energy
            reading.energy_mj = energy
            if (
                not current
                or ts - tick_ts > TICK_SPREAD_MS
                or ts < tick_ts
                or any(r.gpu_uuid == reading.gpu_uuid for r in current)
            ):
                current = [reading]
                tick_ts = ts
                ticks.append((ts, current))
            else:
                current.append(reading)
        return ticks

    @property
    def trace_start_ms(self) -> int | None:
        return self._ticks[0][0] if self._ticks else None

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._ticks)

    def ticks(self) -> list[tuple[int, list[GpuReading]]]:
        """(ts_ms, readings) of every tick, in trace order."""
        return self._ticks

    def read(self, wall_ms: int) -> list[GpuReading]:
        if self.exhausted:
            return []
        _, readings = self._ticks[self._next]
        self._next += 1
        return [GpuReading(**{name: getattr(r, name) for name in r.__slots__}) for r in readings]

    def close(self) -> None:
        return None
