"""Pure: one node's rollup state, from deduplicated samples to closed window records.

The state is a plain JSON-able dict so that the Faust table can hold it and its
changelog can restore it. Per GPU it keeps:

- `pending`: samples not yet processed, keyed by ts. A sample waits there until the
  GPU's newest ts is `lateness_ms` past it, so any arrival order within the lateness
  is processed in ts order and gives the same totals.
- `cursor`: the last processed reading (see deltas.step): [ts, energy mJ, power mW,
  busy remainder in %·ms]; a cursor written before the remainder was kept has three
  items and loads with a remainder of 0.
- `windows`: open windows -> accumulators per (kind, tenant, lease, plan).

A window closes once the cursor has reached its end; its accumulators become
UsageRecords. A sample that arrives at or before the cursor is too late to be placed:
it is returned as late (the worker sends it to the DLQ with that reason), never
dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.samples import GpuReading, NodeSample
from schemas.units import MS_PER_MINUTE, avg_power_mw
from schemas.usage import KIND_ADJUSTMENT, KIND_IDLE, KIND_USAGE, UsageRecord
from streams import deltas
from streams.dedupe import seen_before
from streams.leases import LeaseIndex
from streams.windows import ValleyHours, cut_points, share, window_start

# The state's parts, JSON as the table's changelog holds them (see above).
State = dict[str, Any]  # a node: node_id, dedupe, gpus
Gpu = dict[str, Any]  # one GPU: cursor, model, pending, max_ts, windows (and newest, closed, suspect_reset)
Window = dict[str, list[int]]  # an open window: accumulators by "kind|tenant|lease|plan"
Entry = list[Any]  # a pending sample of a GPU: [ts, energy, power, util, reset, error, offset]

# accumulator slots
ALLOC, BUSY, ENERGY, PEAK, SAMPLES, UNMETERED, OFF_MIN, OFF_MAX, UNHEALTHY = range(9)


@dataclass(frozen=True)
class RollupConfig:
    window_ms: int = MS_PER_MINUTE
    lateness_ms: int = 5_000
    max_gap_ms: int = 30_000
    # a node silent this long (wall clock, processing time) has its open windows closed,
    # so a host that disappears is still billed; data it sends later for such a window
    # becomes an adjustment record
    idle_close_ms: int = 5 * MS_PER_MINUTE
    valley_hours: ValleyHours = field(default_factory=ValleyHours)


@dataclass
class Outcome:
    """What one sample did: records closed by it, and whether it was a duplicate or late."""

    records: list[UsageRecord] = field(default_factory=list)
    duplicate: bool = False
    late_gpus: list[str] = field(default_factory=list)
    rejected: str | None = None  # the whole sample was refused (nothing of it applied), and why


def new_state(node_id: str) -> State:
    return {"node_id": node_id, "dedupe": {}, "gpus": {}}


def _pending_entry(reading: GpuReading, ts_ms: int, offset: int) -> Entry:
    return [
        ts_ms,
        reading.energy_mj,
        reading.power_mw,
        reading.util_gpu_pct,
        reading.counter_reset,
        reading.error,
        offset,
    ]


def _reading_from_entry(entry: Entry) -> GpuReading:
    _, energy, power, util, reset, error, _ = entry
    return GpuReading("", "", power_mw=power, energy_mj=energy, util_gpu_pct=util, counter_reset=reset, error=error)


class NodeRollup:
    """Applies samples to a node's state dict (mutated in place)."""

    def __init__(self, config: RollupConfig, leases: LeaseIndex, partition: int = 0) -> None:
        self.config = config
        self.leases = leases
        self.partition = partition

    def apply(self, state: State, sample: NodeSample, offset: int) -> Outcome:
        """Dedupe, buffer, process what the lateness allows, and close windows."""
        outcome = Outcome()
        horizon = max(16, self.config.lateness_ms // max(sample.interval_ms, 1) + 1)
        if seen_before(state["dedupe"], sample.boot_id, sample.seq, horizon):
            outcome.duplicate = True
            return outcome
        outcome.rejected = self._counter_went_back(state, sample)
        if outcome.rejected:
            return outcome
        for reading in sample.gpus:
            gpu = state["gpus"].setdefault(
                reading.gpu_uuid, {"cursor": None, "model": reading.model, "pending": {}, "max_ts": 0, "windows": {}}
            )
            if reading.model:
                gpu["model"] = reading.model
            cursor = gpu["cursor"]
            if cursor is not None and sample.ts_ms <= cursor[0]:
                outcome.late_gpus.append(reading.gpu_uuid)
                continue
            gpu["pending"].setdefault(str(sample.ts_ms), _pending_entry(reading, sample.ts_ms, offset))
            if reading.energy_mj is not None and sample.ts_ms > gpu.get("newest", [-1])[0]:
                gpu["newest"] = [sample.ts_ms, reading.energy_mj]
            gpu["max_ts"] = max(gpu["max_ts"], sample.ts_ms)
            outcome.records.extend(
                self._advance(state["node_id"], reading.gpu_uuid, gpu, gpu["max_ts"] - self.config.lateness_ms)
            )
        return outcome

    @staticmethod
    def _counter_went_back(state: State, sample: NodeSample) -> str | None:
        """A newer reading whose energy counter is below the newest known one, with no reset
        marker, is refused once (it is more likely corrupt than a reset). If the next newer
        reading is below again, the counter really restarted: it is accepted as a reset."""
        refused = []
        for reading in sample.gpus:
            gpu = state["gpus"].get(reading.gpu_uuid)
            if gpu is None or reading.energy_mj is None or reading.counter_reset or "newest" not in gpu:
                continue
            newest_ts, newest_energy = gpu["newest"]
            if sample.ts_ms <= newest_ts:
                continue
            if reading.energy_mj < newest_energy and not gpu.get("suspect_reset"):
                refused.append((gpu, f"{reading.gpu_uuid} {newest_energy} -> {reading.energy_mj} mJ"))
            else:
                gpu.pop("suspect_reset", None)
        for gpu, _ in refused:
            gpu["suspect_reset"] = True
        if refused:
            return "energy counter went backwards without a reset marker: " + "; ".join(r for _, r in refused)
        return None

    def flush(self, state: State) -> list[UsageRecord]:
        """Process every pending sample and close every window (end of input, tests, demo)."""
        records: list[UsageRecord] = []
        for uuid, gpu in state["gpus"].items():
            records.extend(self._advance(state["node_id"], uuid, gpu, gpu["max_ts"], close_all=True))
        return records

    def close_idle(self, state: State, now_ms: int) -> list[UsageRecord]:
        """Close every open window of a node whose last sample was processed `idle_close_ms`
        ago (`state["seen_wall_ms"]`, wall clock, set by the worker), so a host that
        disappears is still billed. A processing-time timeout rather than event time: a host
        replaying hours of spooled samples keeps its state fresh and is not cut up."""
        seen = state.get("seen_wall_ms")
        if seen is None or seen + self.config.idle_close_ms > now_ms:
            return []
        records: list[UsageRecord] = []
        for uuid, gpu in state["gpus"].items():
            if not (gpu["pending"] or gpu["windows"]):
                continue
            cursor_ts = gpu["max_ts"]
            records.extend(self._advance(state["node_id"], uuid, gpu, cursor_ts, close_all=True))
            # only the window holding the cursor can receive data later: remember it
            closed = gpu.setdefault("closed", {})
            closed.setdefault(str(window_start(cursor_ts, self.config.window_ms)), 0)
            for old in sorted(closed, key=int)[:-8]:
                del closed[old]
        return records

    def _advance(self, node_id: str, uuid: str, gpu: Gpu, up_to_ms: int, close_all: bool = False) -> list[UsageRecord]:
        ready = sorted(int(ts) for ts in gpu["pending"] if int(ts) <= up_to_ms)
        for ts in ready:
            entry = gpu["pending"].pop(str(ts))
            prev = deltas.Cursor(*gpu["cursor"]) if gpu["cursor"] is not None else None
            cursor, interval = deltas.step(prev, ts, _reading_from_entry(entry), self.config.max_gap_ms)
            if cursor is not None:
                gpu["cursor"] = [
                    cursor.ts_ms,
                    cursor.energy_mj,
                    cursor.power_mw,
                    cursor.busy_rem_pct_ms,
                    cursor.error_since_ms,
                ]
            if interval is not None:
                self._accumulate(uuid, gpu, interval, entry[6])
        frontier = gpu["cursor"][0] if gpu["cursor"] is not None else None
        closed = [
            ws
            for ws in gpu["windows"]
            if close_all or (frontier is not None and int(ws) + self.config.window_ms <= frontier)
        ]
        records: list[UsageRecord] = []
        for ws in sorted(closed, key=int):
            revision = 0
            if ws in gpu.get("closed", {}):  # emitted before (closed while the GPU was silent)
                revision = gpu["closed"][ws] = gpu["closed"][ws] + 1
            records.extend(self._records(node_id, uuid, gpu["model"], int(ws), gpu["windows"].pop(ws), revision))
        return records

    def _accumulate(self, uuid: str, gpu: Gpu, interval: deltas.Interval, offset: int) -> None:
        start, end = interval.start_ms, interval.end_ms
        points = cut_points(start, end, self.config.window_ms, self.leases.boundaries(uuid, start, end))
        for a, b in zip(points, points[1:]):
            lease = self.leases.lease_at(uuid, a)
            key = f"{KIND_USAGE}|{lease.tenant_id}|{lease.lease_id}|{lease.plan}" if lease else f"{KIND_IDLE}|||"
            window = gpu["windows"].setdefault(str(window_start(a, self.config.window_ms)), {})
            acc = window.get(key)
            if acc is None:
                acc = window[key] = [0, 0, 0, 0, 0, 0, offset, offset, 0]
            elif len(acc) <= UNHEALTHY:  # a window of a state kept before the column existed
                acc.append(0)
            if interval.metered:
                acc[ALLOC] += b - a
                acc[UNHEALTHY] += max(0, b - max(a, end - interval.unhealthy_ms))
                acc[BUSY] += share(interval.busy_ms, a, b, start, end)
                acc[ENERGY] += share(interval.energy_mj, a, b, start, end)
                acc[PEAK] = max(acc[PEAK], interval.power_mw)
            else:
                acc[UNMETERED] += b - a
            if b == end:
                acc[SAMPLES] += 1
            acc[OFF_MIN] = min(acc[OFF_MIN], offset)
            acc[OFF_MAX] = max(acc[OFF_MAX], offset)

    def _records(
        self, node_id: str, uuid: str, model: str, ws: int, window: Window, revision: int = 0
    ) -> list[UsageRecord]:
        """Records of a closed window; revision > 0: what arrived after it was first emitted
        (leased time becomes an `adjustment` to add on the tenant's next invoice)."""
        records = []
        for key, acc in sorted(window.items()):
            kind, tenant, lease_id, plan = key.split("|")
            suffix = f"/r{revision}" if revision else ""
            records.append(
                UsageRecord(
                    record_id=f"{uuid}/{ws}/{kind}/{tenant}/{lease_id}{suffix}",
                    kind=KIND_ADJUSTMENT if revision and kind == KIND_USAGE else kind,
                    tenant_id=tenant,
                    lease_id=lease_id,
                    plan=plan,
                    node_id=node_id,
                    gpu_uuid=uuid,
                    model=model,
                    window_start_ms=ws,
                    window_end_ms=ws + self.config.window_ms,
                    tou_period=self.config.valley_hours.period(ws),
                    allocated_gpu_ms=acc[ALLOC],
                    busy_gpu_ms=acc[BUSY],
                    energy_mj=acc[ENERGY],
                    avg_power_mw=avg_power_mw(acc[ENERGY], acc[ALLOC]),
                    peak_power_mw=acc[PEAK],
                    sample_count=acc[SAMPLES],
                    observed_ms=acc[ALLOC],
                    unmetered_ms=acc[UNMETERED],
                    unhealthy_ms=acc[UNHEALTHY] if len(acc) > UNHEALTHY else 0,
                    source_partition=self.partition,
                    source_offset_min=acc[OFF_MIN],
                    source_offset_max=acc[OFF_MAX],
                )
            )
        return records
