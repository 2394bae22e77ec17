"""Replay a recorded GPU trace as if it were NVML.

Two CSV shapes are read, columns identified by their header in any order:
- `nvidia-smi --query-gpu=timestamp,uuid,name,power.draw,utilization.gpu,... --format=csv`:
  header `timestamp, uuid, name, power.draw [W], utilization.gpu [%], ...`, values with
  units (`31.00 W`, `0 %`, `1024 MiB`), `[N/A]` / `[Not Supported]` for missing values,
  and local timestamps without a zone (`2026/11/02 10:15:01.123`, taken as UTC unless
  `tz` says otherwise);
- a simple form: `timestamp,gpu_uuid,power_w,util_gpu_pct[,energy_mj][,model]`, with ISO
  timestamps or epoch milliseconds.

GPUs are told apart by, in this order of preference, a uuid column (`uuid`, `gpu_uuid`,
`gpu`, `gpu_id`), `pci.bus_id`, or `index`. Bus ids and indexes are only unique on their
host, so such a GPU is named `<node_id>:pci.bus_id:<bus id>` or `<node_id>:index:<n>` (the
log line at load says which column was used). A log with no id column at all (nvidia-smi
writes none unless asked) is one GPU, named by `gpu_uuid` (`--gpu-uuid`); `gpu_uuid` may
also name the single GPU of a log keyed by bus id or index.

Timestamps without an offset are in `tz`: an IANA zone (`Europe/Berlin`; a repeated hour
when clocks go back is read as its second pass once the log's times would otherwise step
back) or a fixed offset (`+05:30`, `-0800`, `UTC`). Timestamps with an offset, and epoch
milliseconds, are absolute.

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
after the start; speed 0 means as fast as possible. Each sample's `interval_ms` is the
time since the previous tick (the log's own cadence).

A log copied while nvidia-smi was still writing ends in a cut-off line: a last line with
fewer values than the header, or an unreadable last line with no newline at its end, is
skipped with one warning. Any other unreadable row raises `TraceError` naming the file,
the line and the problem.
"""

from __future__ import annotations

import csv
import logging
import re
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agents.backends.errors import TraceError
from schemas.samples import GpuReading
from schemas.units import datetime_to_ms, watts_to_mw

log = logging.getLogger(__name__)

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
    "model": ("name", "model"),
    "power": ("power.draw [w]", "power.draw", "power_w", "power.draw.instant [w]", "power.draw.average [w]"),
    "util_gpu": ("utilization.gpu [%]", "utilization.gpu", "util_gpu_pct", "util"),
    "util_mem": ("utilization.memory [%]", "utilization.memory", "util_mem_pct"),
    "mem_used": ("memory.used [mib]", "memory.used"),
    "mem_total": ("memory.total [mib]", "memory.total"),
    "temperature": ("temperature.gpu", "temperature_c"),
    "energy": ("energy_mj", "total_energy_consumption [mj]"),
}
# how GPUs are told apart, best first: (key kind, header names)
_GPU_ID_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("uuid", ("uuid", "gpu_uuid", "gpu", "gpu_id")),
    ("pci.bus_id", ("pci.bus_id",)),
    ("index", ("index",)),
)
_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


def parse_tz(text: str) -> tzinfo:
    """A time zone from `UTC`, a fixed offset (`+05:30`, `-0800`, `+5`, `UTC+01:00`) or an
    IANA name (`Europe/Berlin`); ValueError naming the accepted forms otherwise."""
    value = text.strip()
    if value.upper() in ("UTC", "Z", "GMT", "+00:00", "-00:00"):
        return timezone.utc
    match = _OFFSET.match(value)
    if match:
        sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3) or 0)
        if hours > 23 or minutes > 59:
            raise ValueError(f"time zone offset {text!r} is out of range (-23:59 .. +23:59)")
        offset = timedelta(hours=hours, minutes=minutes)
        return timezone(-offset if sign == "-" else offset)
    try:
        if value and not value.startswith(("/", ".")) and ".." not in value:
            return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    raise ValueError(f"unknown time zone {text!r}: give an IANA name (Europe/Berlin) or an offset (+05:30)")


def _as_tz(tz: tzinfo | str | None, tz_offset_minutes: int) -> tzinfo:
    if tz is None or tz == "":
        return timezone(timedelta(minutes=tz_offset_minutes))
    if isinstance(tz, str):
        try:
            return parse_tz(tz)
        except ValueError as exc:
            raise TraceError(str(exc)) from None
    return tz


def _find_columns(header: list[str], where: str, gpu_uuid: str | None) -> tuple[dict[str, int], str]:
    """Column positions, and how GPUs are keyed: "uuid", "pci.bus_id", "index", or "fixed"
    (no id column: every row is the GPU `gpu_uuid`)."""
    names = [h.strip().lower() for h in header]
    found: dict[str, int] = {}
    for key, aliases in _COLUMNS.items():
        for alias in aliases:
            if alias in names:
                found[key] = names.index(alias)
                break
    key_kind = "fixed"
    for kind, aliases in _GPU_ID_COLUMNS:
        column = next((names.index(alias) for alias in aliases if alias in names), None)
        if column is not None:
            found["gpu"], key_kind = column, kind
            break
    missing = [k for k in ("timestamp", "power") if k not in found]
    if missing:
        raise TraceError(f"{where}: header has no {', '.join(missing)} column (got: {', '.join(names)})")
    if key_kind == "fixed" and not gpu_uuid:
        raise TraceError(
            f"{where}: header has no GPU id column (uuid, pci.bus_id or index; got: {', '.join(names)}); "
            "for a single-GPU log pass --gpu-uuid UUID, for more GPUs add uuid or index to --query-gpu"
        )
    if key_kind == "uuid" and gpu_uuid:
        raise TraceError(f"{where}: the log names its GPUs in a uuid column; --gpu-uuid is for a log without one")
    return found, key_kind


def _number(text: str) -> str | None:
    value = text.strip()
    if value.lower() in _MISSING:
        return None
    for unit in (" W", " %", " MiB", " mJ", " C", "W", "%", "MiB", "mJ"):
        if value.endswith(unit):
            return value[: -len(unit)].strip()
    return value


def _local_ms(naive: datetime, tz: tzinfo, previous_ms: int | None) -> int:
    """A wall-clock time in `tz`. In the hour a zone repeats (clocks going back) the first
    pass is taken until the log's times would step back by more than a tick's spread; from
    then on the second pass."""
    first = datetime_to_ms(naive.replace(tzinfo=tz, fold=0))
    if previous_ms is None or previous_ms - first <= TICK_SPREAD_MS:
        return first
    second = datetime_to_ms(naive.replace(tzinfo=tz, fold=1))
    return second if second != first else first


def _timestamp(text: str, tz: tzinfo, previous_ms: int | None = None) -> int:
    value = text.strip()
    if value.isdigit():
        if int(value) < _EPOCH_MS_MIN:
            raise ValueError(f"timestamp {value} looks like epoch seconds; epoch timestamps must be in ms")
        return int(value)
    for fmt in ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S"):
        try:
            naive = datetime.strptime(value, fmt)
        except ValueError:
            continue
        return _local_ms(naive, tz, previous_ms)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return datetime_to_ms(parsed) if parsed.tzinfo else _local_ms(parsed, tz, previous_ms)


def _row_reading(row: list[str], cols: dict[str, int], gpu: str) -> tuple[int | None, GpuReading]:
    def field(key: str) -> str | None:
        return _number(row[cols[key]]) if key in cols else None

    def decimal(key: str) -> Decimal | None:
        text = field(key)  # exact: Decimal, not float, so large counters keep every mJ
        if text is None:
            return None
        try:
            value = Decimal(text)
        except ArithmeticError:
            raise ValueError(f"{key} {row[cols[key]].strip()!r} is not a number") from None
        if not value.is_finite():
            raise ValueError(f"{key} {row[cols[key]].strip()!r} is not a number")
        return value

    def integer(key: str, scale: int = 1) -> int | None:
        value = decimal(key)
        return None if value is None else int((value * scale).to_integral_value())

    power = decimal("power")
    reading = GpuReading(
        gpu_uuid=gpu,
        model=(row[cols["model"]].strip() if "model" in cols else ""),
        power_mw=watts_to_mw(power) if power is not None else None,
        util_gpu_pct=integer("util_gpu"),
        util_mem_pct=integer("util_mem"),
        mem_used_bytes=integer("mem_used", MIB),
        mem_total_bytes=integer("mem_total", MIB),
        temperature_c=integer("temperature"),
    )
    return integer("energy"), reading


class _GpuNames:
    """Turns a row's GPU id cell into the GPU's name (see the module notes)."""

    def __init__(self, kind: str, gpu_uuid: str | None, node_id: str) -> None:
        self.kind = kind
        self.gpu_uuid = gpu_uuid
        self.node_id = node_id
        self.first_id: str | None = None

    def name(self, row: list[str], cols: dict[str, int], where: str) -> str:
        if self.kind == "fixed":
            return self.gpu_uuid or ""
        cell = row[cols["gpu"]].strip()
        if not cell:
            raise TraceError(f"{where}: empty GPU id")
        if self.kind == "uuid":
            return cell
        if self.gpu_uuid:
            if self.first_id is None:
                self.first_id = cell
            elif cell != self.first_id:
                raise TraceError(
                    f"{where}: a second GPU ({self.kind} {cell}) in a log replayed as the single GPU "
                    f"{self.gpu_uuid}; without --gpu-uuid each GPU is keyed by its {self.kind}"
                )
            return self.gpu_uuid
        return f"{self.node_id}:{self.kind}:{cell}"


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return True
        handle.seek(-1, 2)
        return handle.read(1) in (b"\n", b"\r")


def _rows(
    path: Path, tz: tzinfo, gpu_uuid: str | None = None, node_id: str = "", notes: dict[str, Any] | None = None
) -> Iterator[tuple[str, int, int | None, bool, GpuReading]]:
    """Per data row: ("file:line", ts_ms, energy from the trace, whether the trace has an
    energy column, reading). `notes` gets "gpu_key" (how GPUs were keyed) and, when the
    cut-off last line was skipped, "skipped" (why)."""
    notes = {} if notes is None else notes
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
        terminated = _ends_with_newline(path)
    except OSError as exc:
        raise TraceError(f"cannot open trace {path}: {exc.strerror}") from None
    with handle:
        rows = csv.reader(handle, skipinitialspace=True)
        line_no = 1
        try:
            header = next(rows, None)
            if header is None:
                raise TraceError(f"{path}: empty trace (no header line)")
            cols, key_kind = _find_columns(header, str(path), gpu_uuid)
            notes["gpu_key"] = key_kind
            names = _GpuNames(key_kind, gpu_uuid, node_id)
            has_energy = "energy" in cols
            previous: tuple[int, str] | None = None  # the last row's (ts, GPU): a fixed GPU's rows must move on
            held: tuple[str, int, int | None, bool, GpuReading] | None = None  # yielded once a next line is seen
            cut_off: tuple[str, str] | None = None  # (where, problem) of a bad row forgiven only as the last line
            for row in rows:
                line_no = rows.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                if cut_off is not None:
                    raise TraceError(f"{cut_off[0]}: {cut_off[1]}")
                if held is not None:
                    yield held
                    held = None
                where = f"{path}:{line_no}"
                if len(row) < len(header):
                    cut_off = (where, f"{len(row)} values, the header has {len(header)}")
                    continue
                try:
                    ts = _timestamp(row[cols["timestamp"]], tz, previous[0] if previous else None)
                    gpu = names.name(row, cols, where)
                    energy, reading = _row_reading(row, cols, gpu)
                except TraceError:
                    raise
                except (ValueError, ArithmeticError) as exc:
                    if terminated:
                        raise TraceError(f"{where}: cannot read this row ({exc})") from None
                    cut_off = (where, f"cannot read this row ({exc})")
                    continue  # no newline after the file's last line: this may be it
                if key_kind == "fixed" and previous is not None and previous[0] == ts:
                    raise TraceError(
                        f"{where}: a second row at the same time in a log without GPU ids; "
                        "a multi-GPU log needs uuid, pci.bus_id or index in --query-gpu"
                    )
                previous = (ts, gpu)
                held = (where, ts, energy, has_energy, reading)
            if cut_off is None and held is not None and not terminated:
                cut_off = (held[0], "no newline at its end, so its last value may be cut short")
                held = None
            if held is not None:
                yield held
            if cut_off is not None:
                notes["skipped"] = f"{cut_off[0]}: {cut_off[1]}"
                log.warning("%s: skipped the last line, cut off while the log was written (%s)", *cut_off)
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


def trapezoid_energy_mj(
    path: Path,
    tz_offset_minutes: int = 0,
    tz: tzinfo | str | None = None,
    gpu_uuid: str | None = None,
    node_id: str | None = None,
) -> dict[str, int]:
    """Each GPU's trapezoid-integrated energy over the whole trace in whole mJ, from the power
    column alone (an energy column, if any, is ignored); GPUs named as the replay names them."""
    integrator = _Integrator()
    rows = _rows(Path(path), _as_tz(tz, tz_offset_minutes), gpu_uuid, node_id or socket.gethostname())
    for where, ts, _energy, _has, reading in rows:
        integrator.add(reading, ts, where)
    return {gpu: twice // 2000 for gpu, twice in integrator.twice_uj.items()}


class ReplayBackend:
    """A trace replayed tick by tick; `read()` returns the next tick's readings.

    `tz`: the zone of timestamps written without one (an IANA name, an offset like
    `+05:30`, or a tzinfo; `tz_offset_minutes` is the older way to give a fixed offset).
    `gpu_uuid`: the GPU of a log without GPU ids. `node_id`: qualifies GPUs keyed by
    `index` or `pci.bus_id` (default: this host's name, as the agent's node id).
    """

    def __init__(
        self,
        path: Path,
        speed: float = 1.0,
        tz_offset_minutes: int = 0,
        tz: tzinfo | str | None = None,
        gpu_uuid: str | None = None,
        node_id: str | None = None,
    ) -> None:
        if not speed >= 0:
            raise ValueError(f"speed must be >= 0 (0: as fast as possible), not {speed!r}")
        self.path = Path(path)
        self.speed = speed
        self.gpu_uuid = gpu_uuid or None
        self.node_id = node_id or socket.gethostname()
        self.gpu_key = ""  # how GPUs were told apart: uuid, pci.bus_id, index, or fixed (--gpu-uuid)
        self.skipped_line: str | None = None  # the cut-off last line that was skipped, and why
        self._ticks = self._load(_as_tz(tz, tz_offset_minutes))
        self._next = 0

    @classmethod
    def from_config(cls, config: Any) -> ReplayBackend:
        """The replay backend an AgentConfig describes (trace, speed, trace_tz, trace_gpu_uuid, node_id)."""
        return cls(
            config.trace,
            speed=config.speed,
            tz=config.trace_tz,
            gpu_uuid=config.trace_gpu_uuid,
            node_id=config.node_id,
        )

    def _load(self, tz: tzinfo) -> list[tuple[int, list[GpuReading]]]:
        ticks: list[tuple[int, list[GpuReading]]] = []
        integrator = _Integrator()
        last_energy: dict[str, int] = {}
        current: list[GpuReading] = []
        tick_ts = 0
        notes: dict[str, Any] = {}
        for where, ts, energy, has_energy, reading in _rows(self.path, tz, self.gpu_uuid, self.node_id, notes):
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
        self.gpu_key = notes.get("gpu_key", "")
        self.skipped_line = notes.get("skipped")
        gpus = sorted({r.gpu_uuid for _, readings in ticks for r in readings})
        if self.gpu_key in ("index", "pci.bus_id"):
            if self.gpu_uuid:
                log.info("%s: the log's only GPU (by %s) is replayed as %s", self.path, self.gpu_key, self.gpu_uuid)
            else:
                log.info("%s: no uuid column, so GPUs are keyed by %s: %s", self.path, self.gpu_key, ", ".join(gpus))
        elif self.gpu_key == "fixed":
            log.info("%s: no GPU id column; every row is GPU %s (--gpu-uuid)", self.path, self.gpu_uuid)
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
