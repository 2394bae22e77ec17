"""Replay a recorded GPU trace as if it were NVML.

Two CSV shapes are read, columns identified by their header in any order:
- `nvidia-smi --query-gpu=timestamp,uuid,name,power.draw,utilization.gpu,... --format=csv`:
  header `timestamp, uuid, name, power.draw [W], utilization.gpu [%], ...`, values with
  units (`31.00 W`, `0 %`, `1024 MiB`), `[N/A]` / `[Not Supported]` for missing values,
  and local timestamps without a zone (`2026/11/02 10:15:01.123`, taken as UTC unless
  `tz_offset_minutes` says otherwise);
- a simple form: `timestamp,gpu_uuid,power_w,util_gpu_pct[,energy_mj][,model]`, with ISO
  timestamps or epoch milliseconds.

Rows become ticks: a new tick starts when a GPU already seen in the current tick
appears again (nvidia-smi stamps each GPU's row a few ms apart). Without an energy
column, the cumulative counter is the trapezoid integral of power over each GPU's own
row times, kept exactly in integers (half-micro-joules) and reported in whole mJ.
"""
from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agents.backends.errors import TraceError
from schemas.samples import GpuReading
from schemas.units import datetime_to_ms, watts_to_mw

MIB = 1024**2
_MISSING = {"", "[n/a]", "n/a", "[not supported]", "not supported", "[unknown error]", "[gpu is lost]"}
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
    for unit in (" W", " %", " MiB", " mJ", "W", "%", "MiB"):
        if value.endswith(unit):
            return value[: -len(unit)].strip()
    return value


def _timestamp(text: str, tz: timezone) -> int:
    value = text.strip()
    if value.isdigit():
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
        text = field(key)
        return None if text is None else round(float(text) * scale)

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


class ReplayBackend:
    """A trace replayed tick by tick; `read()` returns the next tick's readings."""

    def __init__(self, path: Path, speed: float = 1.0, tz_offset_minutes: int = 0) -> None:
        self.path = Path(path)
        self.speed = speed
        self._ticks = self._load(timezone(timedelta(minutes=tz_offset_minutes)))
        self._next = 0

    def _load(self, tz: timezone) -> list[tuple[int, list[GpuReading]]]:
        try:
            handle = open(self.path, newline="")
        except OSError as exc:
            raise TraceError(f"cannot open trace {self.path}: {exc.strerror}") from None
        ticks: list[tuple[int, list[GpuReading]]] = []
        twice_uj: dict[str, int] = {}  # trapezoid integral x 2, in micro-joules
        last: dict[str, tuple[int, int]] = {}  # gpu -> (row ts, power mW)
        with handle:
            rows = csv.reader(handle, skipinitialspace=True)
            header = next(rows, None)
            if header is None:
                raise TraceError(f"{self.path}: empty trace")
            cols = _find_columns(header, str(self.path))
            current: list[GpuReading] = []
            for line_no, row in enumerate(rows, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                where = f"{self.path}:{line_no}"
                if len(row) < len(header):
                    raise TraceError(f"{where}: {len(row)} values, the header has {len(header)}")
                try:
                    ts = _timestamp(row[cols["timestamp"]], tz)
                    energy, reading = _row_reading(row, cols)
                except (ValueError, ArithmeticError) as exc:
                    raise TraceError(f"{where}: cannot read this row ({exc})") from None
                if not reading.gpu_uuid:
                    raise TraceError(f"{where}: empty GPU id")
                if energy is None and "energy" not in cols:
                    energy = self._integrate(twice_uj, last, reading, ts, where)
                reading.energy_mj = energy
                if not current or any(r.gpu_uuid == reading.gpu_uuid for r in current):
                    current = [reading]
                    ticks.append((ts, current))
                else:
                    current.append(reading)
        return ticks

    @staticmethod
    def _integrate(twice_uj: dict[str, int], last: dict[str, tuple[int, int]], reading: GpuReading, ts: int,
                   where: str) -> int | None:
        if reading.power_mw is None:
            return twice_uj[reading.gpu_uuid] // 2000 if reading.gpu_uuid in twice_uj else None
        previous = last.get(reading.gpu_uuid)
        total = twice_uj.get(reading.gpu_uuid, 0)
        if previous is not None:
            if ts < previous[0]:
                raise TraceError(f"{where}: timestamp goes back in time for {reading.gpu_uuid}")
            total += (previous[1] + reading.power_mw) * (ts - previous[0])  # (p1 + p2) x dt, in uJ x 2
        twice_uj[reading.gpu_uuid] = total
        last[reading.gpu_uuid] = (ts, reading.power_mw)
        return total // 2000  # (p1 + p2) x dt is 2 x uJ; / 2 / 1000 -> mJ

    @property
    def trace_start_ms(self) -> int | None:
        return self._ticks[0][0] if self._ticks else None

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._ticks)

    def ticks(self) -> list[tuple[int, list[GpuReading]]]:
        return self._ticks

    def read(self, wall_ms: int) -> list[GpuReading]:
        if self.exhausted:
            return []
        _, readings = self._ticks[self._next]
        self._next += 1
        return [GpuReading(**{name: getattr(r, name) for name in r.__slots__}) for r in readings]

    def close(self) -> None:
        return None
