"""A simulated fleet for the demo, the tests and the benchmarks: leases and node samples
published to the real broker through the agent's own code (simulated NVML, simulated clock)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from agents.backends.simulated import SimulatedBackend
from agents.clock import SimulatedClock
from agents.kafka_sink import KafkaSampleSink
from agents.sampler import Sampler
from schemas.leases import GpuLeaseTimeline, Lease
from schemas.samples import NodeSample
from schemas.topics import GPU_LEASES


@dataclass
class FleetPlan:
    nodes: list[str]
    gpus_per_node: int
    start_ms: int
    ticks: int
    interval_ms: int = 1000
    util: int | None = None  # None: seeded busy/idle phases; a number pins it (hand-computable)
    seed: int = 0
    leases: list[Lease] = field(default_factory=list)

    def backend(self, node: str) -> SimulatedBackend:
        return SimulatedBackend(gpus=self.gpus_per_node, node_id=node, seed=self.seed, constant_util=self.util)

    def gpu_uuids(self) -> list[str]:
        return [uuid for node in self.nodes for uuid in self.backend(node).uuids]


def demo_plan(start_ms: int, minutes: int = 60, tail_s: int = 70) -> FleetPlan:
    """8 GPUs on 2 nodes for `minutes`, rented by 3 tenants, one GPU left idle.

    acme holds 3 GPUs all along; globex 2 GPUs for the first half; initech 2 GPUs on
    the valley plan from minute 20 and the second of globex's GPUs after it is freed.
    Samples run `tail_s` past the end so that the last windows close.
    """
    plan = FleetPlan(nodes=["node-a", "node-b"], gpus_per_node=4, start_ms=start_ms, ticks=minutes * 60 + tail_s + 1)
    gpus = plan.gpu_uuids()
    end = start_ms + minutes * 60_000
    half = start_ms + minutes * 30_000
    twenty = start_ms + 20 * 60_000
    plan.leases = [Lease(f"lease-acme-{i}", "acme", gpus[i], start_ms, end) for i in range(3)]
    plan.leases += [Lease(f"lease-globex-{i}", "globex", gpus[i], start_ms, half) for i in (3, 4)]
    plan.leases += [Lease(f"lease-initech-{i}", "initech", gpus[i], twenty, end, "valley") for i in (5, 6)]
    plan.leases += [Lease("lease-initech-4b", "initech", gpus[4], half, end, "valley")]
    return plan


def publish_leases(bootstrap: str, leases: list[Lease]) -> None:
    """One timeline per GPU on the compacted gpu.leases topic."""
    from kafka import KafkaProducer

    by_gpu: dict[str, list[Lease]] = defaultdict(list)
    for lease in leases:
        by_gpu[lease.gpu_uuid].append(lease)
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", enable_idempotence=True)
    try:
        for gpu, gpu_leases in by_gpu.items():
            producer.send(GPU_LEASES, key=gpu.encode(), value=GpuLeaseTimeline(gpu, gpu_leases).to_json_bytes())
    finally:
        producer.flush()
        producer.close()


def fleet_samples(plan: FleetPlan) -> Iterator[NodeSample]:
    """Every node's samples for the plan, interleaved tick by tick as a fleet would send them."""
    samplers = [
        Sampler(plan.backend(node), SimulatedClock(plan.start_ms), node, plan.interval_ms, boot_id=f"{node}-boot")
        for node in plan.nodes
    ]
    for _ in range(plan.ticks):
        for sampler in samplers:
            yield sampler.tick()
            sampler.clock.sleep_until_mono(sampler.clock.mono_ms() + plan.interval_ms)


def encoded_samples(plan: FleetPlan) -> list[tuple[bytes, bytes]]:
    """(key, value) of every message `publish_samples` sends, for bare-client baselines."""
    return [(sample.node_id.encode(), sample.to_json_bytes()) for sample in fleet_samples(plan)]


def publish_samples(bootstrap: str, plan: FleetPlan) -> int:
    """Send the plan's samples to gpu.samples through the agent's Kafka sink; returns how many."""
    sink = KafkaSampleSink(bootstrap)
    sent = 0
    try:
        for sample in fleet_samples(plan):
            sink.send(sample)
            sent += 1
    finally:
        sink.close()
    return sent
