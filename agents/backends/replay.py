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

A log without GPU ids is read whole before anything is replayed, and refused as one GPU
when its rows come in sweeps: nvidia-smi writes one row per GPU, a few ms apart, at each
tick of its loop, so a 4-GPU host's log would otherwise be one GPU sampled every few ms
(a quarter of the bill). Sweep-shaped means: the gaps between rows fall into two sizes,
those between sweeps at least `SWEEP_GAP_RATIO` times the largest within one, which is at
most `SWEEP_ROW_GAP_MS`, and the median sweep holds 2 to `MAX_GPUS_PER_SWEEP` rows; or the
whole log (2 to `MAX_GPUS_PER_SWEEP` rows) lies within a tenth of `interval_ms` (one sweep).
`gpus_per_sweep` N (`--gpus-per-sweep`) reads such a log instead: sweeps are split at those
gaps, each must hold N rows (a shorter last sweep, cut off while the log was written, is kept
with one warning), and a row's position p in its sweep names its GPU `<node_id>:index:<p>`,
as a log keyed by index would (nvidia-smi writes a sweep in index order). N = 1 makes every
row its own sweep, one GPU (`gpu_uuid`, else `<node_id>:index:0`), with no shape check.

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
from schemas.units import UJ_PER_MJ, datetime_to_ms, watts_to_mw

log = logging.getLogger(__name__)

MIB = 1024**2
TICK_SPREAD_MS = 500  # rows of one tick lie within this much of the tick's first row
# a log without GPU ids whose rows come in sweeps of several GPUs (see the module notes)
SWEEP_GAP_RATIO = 4  # the gaps between sweeps are at least this many times those within one
SWEEP_ROW_GAP_MS = 50  # rows of one sweep follow each other this closely at most (nvidia-smi: a few ms)
MAX_GPUS_PER_SWEEP = 64
FAR_BELOW = 10  # a whole log within interval_ms / FAR_BELOW is one sweep, not one GPU's history
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
# an ISO time's fraction and offset, written as Python 3.10's fromisoformat takes them (3.11 takes more)
_ISO_TAIL = re.compile(r"(\d{2}:\d{2}:\d{2})(?:[.,](\d+))?(?:([+-]\d{2}):?(\d{2})?)?$")


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


def _find_columns(
    header: list[str], where: str, gpu_uuid: str | None, gpus_per_sweep: int | None = None
) -> tuple[dict[str, int], str]:
    """Column positions, and how GPUs are keyed: "uuid", "pci.bus_id", "index", "fixed" (no id
    column: every row is the GPU `gpu_uuid`) or "sweep" (no id column: by row position in a sweep)."""
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
    if gpus_per_sweep is not None:
        if key_kind != "fixed":
            article = "an" if key_kind == "index" else "a"
            raise TraceError(
                f"{where}: the log names its GPUs in {article} {key_kind} column; "
                "--gpus-per-sweep is for a log without one"
            )
        if gpu_uuid and gpus_per_sweep > 1:
            raise TraceError(
                f"{where}: --gpu-uuid names one GPU; with --gpus-per-sweep {gpus_per_sweep} the GPUs are named "
                "<node id>:index:<row position in the sweep>, so leave --gpu-uuid out"
            )
        key_kind = "sweep"
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


def _iso_tail(match: re.Match[str]) -> str:
    """`10:00:00.5+0100` as `10:00:00.500000+01:00`: any number of fraction digits (cut to 6, as
    3.11 does) and offsets without a colon read the same on every Python."""
    clock, fraction, hours, minutes = match.groups()
    tail = clock + (f".{(fraction + '00000')[:6]}" if fraction else "")
    return tail + (f"{hours}:{minutes or '00'}" if hours else "")


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
    parsed = datetime.fromisoformat(_ISO_TAIL.sub(_iso_tail, value.replace("Z", "+00:00")))
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
        if self.kind in ("fixed", "sweep"):
            return self.gpu_uuid or ""  # a sweep's rows are named once the sweeps are known (_by_sweep)
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


_Row = tuple[str, int, int | None, bool, GpuReading]  # ("file:line", ts_ms, trace energy, has energy, reading)
_ReadRow = tuple[str, int, int | None, bool, GpuReading, str]  # and the timestamp as written


def _split_sweeps(stamps: list[int]) -> list[range] | None:
    """The rows of each sweep (positions in `stamps`), when the gaps between rows fall into two
    sizes: within a sweep, and between sweeps at least SWEEP_GAP_RATIO times the largest gap
    within one. None when no gap size stands out so, or when times go back."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    if not gaps or min(gaps) < 0:
        return None
    ordered = sorted(gaps)
    cut = next((lo for lo, hi in zip(ordered, ordered[1:]) if hi >= SWEEP_GAP_RATIO * max(lo, 1)), None)
    if cut is None:
        return None
    starts = [0] + [i + 1 for i, gap in enumerate(gaps) if gap > cut]
    return [range(a, b) for a, b in zip(starts, [*starts[1:], len(stamps)])]


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2] if values else 0


def _refuse_sweeps(path: Path, rows: list[_ReadRow], gpu: str, interval_ms: int) -> None:
    """A log without GPU ids, replayed as the one GPU `gpu`, must look like one GPU's history.
    Refused (TraceError) when its rows come in sweeps of 2 to MAX_GPUS_PER_SWEEP rows at most
    SWEEP_ROW_GAP_MS apart, or when it is one such burst within interval_ms / FAR_BELOW: nvidia-smi
    writes a row per GPU, a few ms apart, at each tick of its loop."""
    stamps = [row[1] for row in rows]
    fix = "add index or uuid to --query-gpu, or pass --gpus-per-sweep"
    span = stamps[-1] - stamps[0]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    if 2 <= len(stamps) <= MAX_GPUS_PER_SWEEP and 0 <= span < interval_ms / FAR_BELOW:
        raise TraceError(
            f"{path}: {len(stamps)} rows within {span} ms, far below the interval ({interval_ms} ms): one sweep of "
            f"{len(stamps)} GPUs without GPU ids, not GPU {gpu} sampled every {_median(gaps)} ms; "
            f"{fix} {len(stamps)}"
        )
    sweeps = _split_sweeps(stamps)
    if sweeps is None:
        return
    size = _median([len(sweep) for sweep in sweeps])
    within = [stamps[i + 1] - stamps[i] for sweep in sweeps for i in sweep[:-1]]
    if not 2 <= size <= MAX_GPUS_PER_SWEEP or max(within, default=0) > SWEEP_ROW_GAP_MS:
        return
    widest = max(stamps[sweep[-1]] - stamps[sweep[0]] for sweep in sweeps)
    cadence = _median([stamps[b[0]] - stamps[a[0]] for a, b in zip(sweeps, sweeps[1:])])
    raise TraceError(
        f"{path}: rows come in sweeps of {size} within {widest} ms, a sweep every {cadence} ms: a log of {size} GPUs "
        f"without GPU ids, not GPU {gpu} sampled every {_median(within)} ms; {fix} {size}"
    )


def _by_sweep(
    path: Path,
    rows: list[_ReadRow],
    per_sweep: int,
    gpu_uuid: str | None,
    node_id: str,
) -> None:
    """Names each row's GPU by its position in its sweep: `<node_id>:index:<position>` (nvidia-smi
    writes a sweep's rows in index order), or `gpu_uuid` when a sweep is one GPU. Every sweep must
    have `per_sweep` rows; a shorter last one (the log copied while it was written) is kept, with
    one warning. One GPU per sweep: every row is its own sweep, no shape is checked."""
    stamps = [row[1] for row in rows]
    for i in range(1, len(rows)):
        if stamps[i] < stamps[i - 1]:
            raise TraceError(f"{rows[i][0]}: timestamp goes back in time")
    if per_sweep == 1:
        sweeps = [range(i, i + 1) for i in range(len(rows))]
    else:
        found = _split_sweeps(stamps)
        if found is None and len(rows) > per_sweep:
            raise TraceError(
                f"{path}: its rows do not come in sweeps (no gap between rows is {SWEEP_GAP_RATIO} times the ones "
                f"before it), so --gpus-per-sweep {per_sweep} cannot tell them apart; add index or uuid to --query-gpu"
            )
        sweeps = found or [range(len(rows))]
    for n, sweep in enumerate(sweeps):
        first, last = rows[sweep[0]], rows[sweep[-1]]
        if len(sweep) == per_sweep:
            pass
        elif n == len(sweeps) - 1 and len(sweep) < per_sweep:
            log.warning(
                "%s: the last sweep has %d rows of %d (cut off while the log was written?); kept as they are",
                first[0],
                len(sweep),
                per_sweep,
            )
        else:
            raise TraceError(
                f"{first[0]}: a sweep of {len(sweep)} rows ({first[5]} to {last[5]}), --gpus-per-sweep says {per_sweep}"
            )
        for position, i in enumerate(sweep):
            rows[i][4].gpu_uuid = gpu_uuid if gpu_uuid and per_sweep == 1 else f"{node_id}:index:{position}"


def _rows(
    path: Path,
    tz: tzinfo,
    gpu_uuid: str | None = None,
    node_id: str = "",
    notes: dict[str, Any] | None = None,
    gpus_per_sweep: int | None = None,
    interval_ms: int = 1000,
) -> Iterator[_Row]:
    """Per data row: ("file:line", ts_ms, energy from the trace, whether the trace has an
    energy column, reading). `notes` gets "gpu_key" (how GPUs were keyed) and, when the
    cut-off last line was skipped, "skipped" (why). A log without GPU ids is read whole
    first: refused when its rows come in sweeps (`_refuse_sweeps`), or, with
    `gpus_per_sweep`, its GPUs named by row position (`_by_sweep`)."""
    notes = {} if notes is None else notes
    rows = _read_rows(path, tz, gpu_uuid, node_id, notes, gpus_per_sweep)
    first = next(rows, None)
    if first is None:
        return
    if notes["gpu_key"] not in ("fixed", "sweep"):
        yield first[:5]
        for row in rows:
            yield row[:5]
        return
    held = [first, *rows]
    if notes["gpu_key"] == "fixed":
        _refuse_sweeps(path, held, gpu_uuid or "", interval_ms)
    else:
        _by_sweep(path, held, gpus_per_sweep or 1, gpu_uuid, node_id)
    for row in held:
        yield row[:5]


def _read_rows(
    path: Path,
    tz: tzinfo,
    gpu_uuid: str | None,
    node_id: str,
    notes: dict[str, Any],
    gpus_per_sweep: int | None,
) -> Iterator[_ReadRow]:
    """_rows' rows as read, each with its timestamp cell as written."""
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
            cols, key_kind = _find_columns(header, str(path), gpu_uuid, gpus_per_sweep)
            notes["gpu_key"] = key_kind
            names = _GpuNames(key_kind, gpu_uuid, node_id)
            has_energy = "energy" in cols
            previous: tuple[int, str] | None = None  # the last row's (ts, GPU): a fixed GPU's rows must move on
            held: _ReadRow | None = None  # yielded once a next line is seen
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
                        "a multi-GPU log needs uuid, pci.bus_id or index in --query-gpu, or --gpus-per-sweep N"
                    )
                previous = (ts, gpu)
                held = (where, ts, energy, has_energy, reading, row[cols["timestamp"]].strip())
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
            return self.twice_uj[gpu] // (2 * UJ_PER_MJ) if gpu in self.twice_uj else None
        previous = self.last.get(gpu)
        total = self.twice_uj.get(gpu, 0)
        if previous is not None:
            if ts < previous[0]:
                raise TraceError(f"{where}: timestamp goes back in time for {gpu}")
            total += (previous[1] + reading.power_mw) * (ts - previous[0])  # mW x ms = uJ; (p1 + p2) is 2 x mean
        self.twice_uj[gpu] = total
        self.last[gpu] = (ts, reading.power_mw)
        return total // (2 * UJ_PER_MJ)  # 2 x uJ -> mJ, floored (the remainder stays in the running total)


def trapezoid_energy_mj(
    path: Path,
    tz_offset_minutes: int = 0,
    tz: tzinfo | str | None = None,
    gpu_uuid: str | None = None,
    node_id: str | None = None,
    gpus_per_sweep: int | None = None,
    interval_ms: int = 1000,
) -> dict[str, int]:
    """Each GPU's trapezoid-integrated energy over the whole trace in whole mJ, from the power
    column alone (an energy column, if any, is ignored); GPUs named as the replay names them."""
    integrator = _Integrator()
    node = node_id or socket.gethostname()
    rows = _rows(Path(path), _as_tz(tz, tz_offset_minutes), gpu_uuid, node, None, gpus_per_sweep, interval_ms)
    for where, ts, _energy, _has, reading in rows:
        integrator.add(reading, ts, where)
    return {gpu: twice // (2 * UJ_PER_MJ) for gpu, twice in integrator.twice_uj.items()}


class ReplayBackend:
    """A trace replayed tick by tick; `read()` returns the next tick's readings.

    `tz`: the zone of timestamps written without one (an IANA name, an offset like
    `+05:30`, or a tzinfo; `tz_offset_minutes` is the older way to give a fixed offset).
    `gpu_uuid`: the GPU of a log without GPU ids. `node_id`: qualifies GPUs keyed by
    `index` or `pci.bus_id` (default: this host's name, as the agent's node id).
    `gpus_per_sweep`: a log without GPU ids holds this many GPUs, keyed by row position in each
    sweep. `interval_ms`: the agent's interval; a log without GPU ids that lies wholly within a
    tenth of it is one sweep of several GPUs, not one GPU's history.
    """

    def __init__(
        self,
        path: Path,
        speed: float = 1.0,
        tz_offset_minutes: int = 0,
        tz: tzinfo | str | None = None,
        gpu_uuid: str | None = None,
        node_id: str | None = None,
        gpus_per_sweep: int | None = None,
        interval_ms: int = 1000,
    ) -> None:
        if not speed >= 0:
            raise ValueError(f"speed must be >= 0 (0: as fast as possible), not {speed!r}")
        self.path = Path(path)
        self.speed = speed
        self.gpu_uuid = gpu_uuid or None
        self.node_id = node_id or socket.gethostname()
        if gpus_per_sweep is not None and gpus_per_sweep < 1:
            raise ValueError(f"gpus_per_sweep must be at least 1, not {gpus_per_sweep!r}")
        self.gpus_per_sweep = gpus_per_sweep
        self.interval_ms = interval_ms
        self.gpu_key = ""  # how GPUs were told apart: uuid, pci.bus_id, index, fixed (--gpu-uuid) or sweep
        self.skipped_line: str | None = None  # the cut-off last line that was skipped, and why
        self._ticks = self._load(_as_tz(tz, tz_offset_minutes))
        self._next = 0

    @classmethod
    def from_config(cls, config: Any) -> ReplayBackend:
        """The replay backend an AgentConfig describes (trace, speed, trace_tz, trace_gpu_uuid,
        trace_gpus_per_sweep, node_id, interval_ms)."""
        return cls(
            config.trace,
            speed=config.speed,
            tz=config.trace_tz,
            gpu_uuid=config.trace_gpu_uuid,
            node_id=config.node_id,
            gpus_per_sweep=config.trace_gpus_per_sweep,
            interval_ms=config.interval_ms,
        )

    def _load(self, tz: tzinfo) -> list[tuple[int, list[GpuReading]]]:
        ticks: list[tuple[int, list[GpuReading]]] = []
        integrator = _Integrator()
        last_energy: dict[str, int] = {}
        current: list[GpuReading] = []
        tick_ts = 0
        notes: dict[str, Any] = {}
        rows = _rows(self.path, tz, self.gpu_uuid, self.node_id, notes, self.gpus_per_sweep, self.interval_ms)
        for where, ts, energy, has_energy, reading in rows:
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
        elif self.gpu_key == "sweep":
            log.info(
                "%s: no GPU id column; GPUs keyed by their row's position in each sweep of %d (--gpus-per-sweep): %s",
                self.path,
                self.gpus_per_sweep,
                ", ".join(gpus),
            )
        return ticks

    def describe(self) -> str:
        """How this replay runs, for the agent's start-up line: the log's own cadence, not an interval."""
        ticks = [ts for ts, _ in self._ticks]
        pace = "as fast as possible" if self.speed == 0 else f"{self.speed:g}x recorded time"
        if len(ticks) < 2:
            return f"replaying {self.path} ({len(ticks)} tick, {pace})"
        every = _median([b - a for a, b in zip(ticks, ticks[1:])])
        return (
            f"replaying {self.path} at the log's own cadence ({len(ticks)} ticks over {ticks[-1] - ticks[0]} ms, "
            f"typically {every} ms apart; {pace})"
        )

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
