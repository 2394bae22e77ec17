"""The contracts: validation reasons, and agreement with the published JSON Schema files."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from schemas.leases import GpuLeaseTimeline, Lease
from schemas.validate import InvalidMessage, parse_lease_timeline, parse_sample
from tests.support.helpers import T0, simulated_samples

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "jsonschema"


def load_schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text())


def good_sample() -> dict:
    samples, _ = simulated_samples("n1", gpus=2, ticks=1)
    return samples[0].to_dict()


def mutate(path: list, value) -> dict:
    data = good_sample()
    target = data
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


BAD_SAMPLES = [
    (["schema_version"], 2, "unknown schema_version"),
    (["seq"], -1, "seq must be >= 0"),
    (["ts_ms"], "yesterday", "ts_ms must be an integer"),
    (["node_id"], "", "node_id must be a non-empty string"),
    (["gpus", 0, "power_mw"], -5, "power_mw must be >= 0"),
    (["gpus", 0, "util_gpu_pct"], 101, "util_gpu_pct must be <= 100"),
    (["gpus", 0, "energy_mj"], 1.5, "energy_mj must be an integer"),
    (["gpus", 0, "surprise"], 1, "unknown field"),
    (["interval_ms"], KeyError, "missing field"),
    (["gpus", 0, "counter_reset"], "yes", "counter_reset must be a boolean"),
]


@pytest.mark.parametrize("path,value,reason", BAD_SAMPLES)
def test_bad_samples_get_a_clear_reason_and_the_json_schema_agrees(path, value, reason):
    data = mutate(path, value)
    with pytest.raises(InvalidMessage, match=reason):
        parse_sample(json.dumps(data).encode())
    assert not jsonschema.Draft202012Validator(load_schema("node_sample.v1.json")).is_valid(data)


def test_good_sample_passes_both_validators():
    data = good_sample()
    assert parse_sample(json.dumps(data).encode()).gpus[0].power_mw == data["gpus"][0]["power_mw"]
    jsonschema.validate(data, load_schema("node_sample.v1.json"))


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"{not json", "not valid JSON"),
        (b'{"x": NaN}', "non-finite number NaN"),
        (b"[1, 2]", "expected a JSON object"),
        (None, "empty message"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_garbage_is_refused_with_a_reason(raw, reason):
    with pytest.raises(InvalidMessage, match=reason):
        parse_sample(raw)


def test_far_future_timestamp_is_refused():
    data = good_sample()
    with pytest.raises(InvalidMessage, match="in the future"):
        parse_sample(json.dumps(data).encode(), now_ms=data["ts_ms"] - 3_600_000)


def test_lease_timeline_round_trip_and_overlap_refused():
    timeline = GpuLeaseTimeline("g", [Lease("a", "t1", "g", T0, T0 + 10), Lease("b", "t2", "g", T0 + 10, None)])
    raw = timeline.to_json_bytes()
    jsonschema.validate(json.loads(raw), load_schema("gpu_lease_timeline.v1.json"))
    assert parse_lease_timeline(raw) == timeline
    overlapping = GpuLeaseTimeline("g", [Lease("a", "t1", "g", T0, T0 + 20), Lease("b", "t2", "g", T0 + 10, None)])
    with pytest.raises(InvalidMessage, match="overlap"):
        parse_lease_timeline(overlapping.to_json_bytes())


def test_usage_records_are_version_2_and_a_version_1_record_still_reads():
    from schemas.usage import USAGE_FIELD_NAMES, UsageRecord
    from tests.support.billing_fixtures import usage_row

    record = usage_row("acme", T0)
    jsonschema.validate(record, load_schema("usage_record.v2.json"))
    assert record["schema_version"] == 2 and record["unhealthy_ms"] == 0
    v1 = {k: v for k, v in record.items() if k != "unhealthy_ms"} | {"schema_version": 1}
    jsonschema.validate(v1, load_schema("usage_record.v1.json"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(v1, load_schema("usage_record.v2.json"))
    read = UsageRecord.from_dict(v1)
    assert (read.unhealthy_ms, read.schema_version) == (0, 1) and "unhealthy_ms" in USAGE_FIELD_NAMES
