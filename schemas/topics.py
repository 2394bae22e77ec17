"""Topic names and their provisioning specs: the one place both producers and the
broker launcher read them from."""

from __future__ import annotations

from dataclasses import dataclass, field

GPU_SAMPLES = "gpu.samples"
GPU_SAMPLES_DLQ = "gpu.samples.dlq"
GPU_LEASES = "gpu.leases"
USAGE_RECORDS = "usage.records"
# lease notices for tenants' own automation, keyed by lease id: compaction keeps a lease's latest event
GPU_LEASE_EVENTS = "gpu.lease.events"


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created: partitions and topic-level configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


# Partition counts are for a local stack; docs/scale.md gives production figures.
TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(GPU_SAMPLES, 4, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
    TopicSpec(GPU_SAMPLES_DLQ, 1, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
    TopicSpec(
        GPU_LEASES,
        1,
        {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"},
    ),
    TopicSpec(
        GPU_LEASE_EVENTS,
        1,
        {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"},
    ),
    TopicSpec(USAGE_RECORDS, 4, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
)
