"""Turn raw message bytes into contract types, or into one clear reason why not.

This mirrors `jsonschema/node_sample.v1.json` (a test checks the two agree) and adds
the checks a schema cannot express, such as a timestamp far in the future. It is
hand-written rather than a generic JSON Schema validator because it runs once per
message on the streams' hot path.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.units import MS_PER_HOUR, MS_PER_MINUTE

try:  # orjson parses several times faster; the stdlib parser explains what orjson refuses
    import orjson as _fast_json
except ImportError:  # pragma: no cover - the streams extra installs it
    _fast_json = None  # type: ignore[assignment]

from schemas.leases import PLANS, GpuLeaseTimeline
from schemas.samples import SAMPLE_SCHEMA_VERSION, NodeSample

MAX_FUTURE_SKEW_MS = 5 * MS_PER_MINUTE
MAX_INTERVAL_MS = MS_PER_HOUR  # the largest interval_ms a sample may carry (node_sample.v1.json)

_GPU_INT_FIELDS: dict[str, tuple[int, int | None]] = {
    "power_mw": (0, 10_000_000),
    "energy_mj": (0, None),
    "util_gpu_pct": (0, 100),
    "util_mem_pct": (0, 100),
    "mem_used_bytes": (0, None),
    "mem_total_bytes": (0, None),
    "temperature_c": (-50, 200),
}
_GPU_FIELDS = set(_GPU_INT_FIELDS) | {"gpu_uuid", "model", "parent_uuid", "counter_reset", "error", "hint"}
_SAMPLE_FIELDS = {"schema_version", "node_id", "boot_id", "seq", "ts_ms", "mono_ms", "interval_ms", "gpus"}


class InvalidMessage(ValueError):
    """A message that breaks its contract; `reason` is short and names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise InvalidMessage(f"non-finite number {name} in JSON")


def parse_json(raw: bytes | str | None) -> dict[str, Any]:
    """Parse a JSON object, refusing NaN/Infinity, bad UTF-8 and non-objects."""
    if raw is None:
        raise InvalidMessage("empty message (null value)")
    if _fast_json is not None:
        try:
            data = _fast_json.loads(raw)
        except _fast_json.JSONDecodeError:
            data = None  # not strict JSON: let the stdlib parser name the problem below
        else:
            if not isinstance(data, dict):
                raise InvalidMessage(f"expected a JSON object, got {type(data).__name__}")
            return data
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except InvalidMessage:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(data).__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(where: str, value: Any, low: int | None, high: int | None, nullable: bool) -> None:
    if value is None and nullable:
        return
    if not _is_int(value):
        raise InvalidMessage(f"{where} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise InvalidMessage(f"{where} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise InvalidMessage(f"{where} must be <= {high}, got {value}")


def _check_str(where: str, value: Any, nullable: bool = False, min_len: int = 1) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or len(value) < min_len:
        raise InvalidMessage(f"{where} must be a non-empty string, got {value!r}")


def validate_sample_dict(data: dict[str, Any], now_ms: int | None = None) -> NodeSample:
    """Check a decoded node sample; `now_ms` enables the far-future check."""
    version = data.get("schema_version")
    if version != SAMPLE_SCHEMA_VERSION:
        raise InvalidMessage(f"unknown schema_version {version!r} (this worker reads {SAMPLE_SCHEMA_VERSION})")
    missing = _SAMPLE_FIELDS - data.keys()
    if missing:
        raise InvalidMessage(f"missing field(s): {', '.join(sorted(missing))}")
    extra = data.keys() - _SAMPLE_FIELDS
    if extra:
        raise InvalidMessage(f"unknown field(s): {', '.join(sorted(extra))}")
    _check_str("node_id", data["node_id"])
    _check_str("boot_id", data["boot_id"])
    _check_int("seq", data["seq"], 0, None, False)
    _check_int("ts_ms", data["ts_ms"], 0, None, False)
    _check_int("mono_ms", data["mono_ms"], 0, None, False)
    _check_int("interval_ms", data["interval_ms"], 1, MAX_INTERVAL_MS, False)
    if now_ms is not None and data["ts_ms"] > now_ms + MAX_FUTURE_SKEW_MS:
        raise InvalidMessage(f"ts_ms {data['ts_ms']} is more than {MAX_FUTURE_SKEW_MS} ms in the future")
    gpus = data["gpus"]
    if not isinstance(gpus, list):
        raise InvalidMessage("gpus must be a list")
    seen: set[str] = set()
    for index, gpu in enumerate(gpus):
        where = f"gpus[{index}]"
        if not isinstance(gpu, dict):
            raise InvalidMessage(f"{where} must be an object")
        extra = gpu.keys() - _GPU_FIELDS
        if extra:
            raise InvalidMessage(f"{where} has unknown field(s): {', '.join(sorted(extra))}")
        _check_str(f"{where}.gpu_uuid", gpu.get("gpu_uuid"))
        if gpu["gpu_uuid"] in seen:
            raise InvalidMessage(f"{where}.gpu_uuid {gpu['gpu_uuid']!r} appears twice")
        seen.add(gpu["gpu_uuid"])
        _check_str(f"{where}.model", gpu.get("model"), min_len=0)
        for name, (low, high) in _GPU_INT_FIELDS.items():
            value = gpu.get(name)
            # fast path inline (this runs for every field of every GPU); the helper words the error
            if value is not None and (type(value) is not int or value < low or (high is not None and value > high)):
                _check_int(f"{where}.{name}", value, low, high, True)
        _check_str(f"{where}.parent_uuid", gpu.get("parent_uuid"), nullable=True)
        _check_str(f"{where}.hint", gpu.get("hint"), nullable=True)
        if not isinstance(gpu.get("counter_reset", False), bool):
            raise InvalidMessage(f"{where}.counter_reset must be a boolean")
        error = gpu.get("error")
        if error is not None and not isinstance(error, str):
            raise InvalidMessage(f"{where}.error must be a string or null")
    return NodeSample.from_dict(data)


def parse_sample(raw: bytes | str | None, now_ms: int | None = None) -> NodeSample:
    """Bytes from `gpu.samples` to a NodeSample, or InvalidMessage with the reason."""
    return validate_sample_dict(parse_json(raw), now_ms)


def parse_lease_timeline(raw: bytes | str | None) -> GpuLeaseTimeline:
    """Bytes from `gpu.leases` to a timeline, or InvalidMessage."""
    data = parse_json(raw)
    if data.get("schema_version") != 1:
        raise InvalidMessage(f"unknown lease schema_version {data.get('schema_version')!r}")
    _check_str("gpu_uuid", data.get("gpu_uuid"))
    _check_int("complete_from_ms", data.get("complete_from_ms"), 0, None, True)  # optional: absent in older messages
    leases = data.get("leases")
    if not isinstance(leases, list):
        raise InvalidMessage("leases must be a list")
    for index, lease in enumerate(leases):
        where = f"leases[{index}]"
        if not isinstance(lease, dict):
            raise InvalidMessage(f"{where} must be an object")
        for name in ("lease_id", "tenant_id", "gpu_uuid"):
            _check_str(f"{where}.{name}", lease.get(name))
        if lease["gpu_uuid"] != data["gpu_uuid"]:
            raise InvalidMessage(f"{where}.gpu_uuid differs from the timeline's gpu_uuid")
        _check_int(f"{where}.start_ms", lease.get("start_ms"), 0, None, False)
        _check_int(f"{where}.end_ms", lease.get("end_ms"), 0, None, True)
        if lease.get("end_ms") is not None and lease["end_ms"] <= lease["start_ms"]:
            raise InvalidMessage(f"{where} ends before it starts")
        if lease.get("plan", "on_demand") not in PLANS:
            raise InvalidMessage(f"{where}.plan must be one of {', '.join(PLANS)}")
    timeline = GpuLeaseTimeline.from_dict(data)
    for earlier, later in zip(timeline.leases, timeline.leases[1:]):
        if earlier.end_ms is None or earlier.end_ms > later.start_ms:
            raise InvalidMessage(f"leases {earlier.lease_id} and {later.lease_id} overlap")
    return timeline
