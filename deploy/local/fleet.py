"""A simulated fleet for the demo, the tests and the benchmarks: leases opened through the
billing ledger and published through its outbox, node samples through the agent's own code
(simulated NVML, simulated clock), all to the real broker."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agents.backends.simulated import SimulatedBackend
from agents.clock import SimulatedClock
from agents.kafka_sink import KafkaSampleSink
from agents.sampler import Sampler
from schemas.leases import Lease
from schemas.samples import NodeSample
from schemas.units import MS_PER_MINUTE

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

FLEET_ACTOR = "fleet-simulator"


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
    the valley plan from a third of the way in (minute 20 of 60) and the second of
    globex's GPUs after it is freed. Every lease ends after it starts, however short the run.
    Samples run `tail_s` past the end so that the last windows close.
    """
    plan = FleetPlan(nodes=["node-a", "node-b"], gpus_per_node=4, start_ms=start_ms, ticks=minutes * 60 + tail_s + 1)
    gpus = plan.gpu_uuids()
    end = start_ms + minutes * MS_PER_MINUTE
    half = start_ms + minutes * 30_000
    third = start_ms + minutes * 20_000
    plan.leases = [Lease(f"lease-acme-{i}", "acme", gpus[i], start_ms, end) for i in range(3)]
    plan.leases += [Lease(f"lease-globex-{i}", "globex", gpus[i], start_ms, half) for i in (3, 4)]
    plan.leases += [Lease(f"lease-initech-{i}", "initech", gpus[i], third, end, "valley") for i in (5, 6)]
    plan.leases += [Lease("lease-initech-4b", "initech", gpus[4], half, end, "valley")]
    return plan


def publish_leases(
    bootstrap: str, leases: list[Lease], ledger_url: str | None = None, *, now_ms: int | None = None
) -> int:
    """Open the leases in the billing ledger through the lease service, then publish each
    GPU's timeline to the compacted gpu.leases topic through the ledger's outbox: the way
    the operator's own leases travel, so the demo and the tests exercise it.

    `ledger_url` defaults to a fresh SQLite file in a temporary directory (removed after).
    Tenants the ledger lacks are created with defaults (USD, UTC, jurisdiction "*").
    `now_ms` is the instant the outbox's horizon counts back from; it defaults to the
    simulated fleet's clock (its earliest lease start), since trimming a simulated past
    against the wall clock would drop its leases. Returns how many timelines were sent.
    """
    from billing.leases.outbox import lease_horizon_ms, publish_pending
    from billing.leases.service import open_lease
    from billing.ledger.db import Ledger
    from billing.ledger.db import now_ms as wall_ms
    from billing.ledger.models import Tenant
    from billing.ledger.store import upsert_tenant

    with ExitStack() as stack:
        if ledger_url is None:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="wattmeter-leases-"))
            ledger_url = f"sqlite:///{work}/billing.db"
        ledger = Ledger(ledger_url)
        stack.callback(ledger.dispose)
        with ledger.transaction() as session:
            for tenant_id in sorted({lease.tenant_id for lease in leases}):
                if session.get(Tenant, tenant_id) is None:  # defaults: USD, UTC, jurisdiction "*"
                    upsert_tenant(session, FLEET_ACTOR, tenant_id)
            session.flush()
            open_valley_offer(session, leases)
            for lease in leases:
                open_lease(
                    session,
                    lease.tenant_id,
                    lease.gpu_uuid,
                    lease.start_ms,
                    lease.end_ms,
                    lease.plan,
                    lease.lease_id,
                    actor=FLEET_ACTOR,
                )
        if now_ms is None:
            now_ms = min((lease.start_ms for lease in leases), default=wall_ms())
        return publish_pending(ledger, bootstrap, lease_horizon_ms(), now_ms)


VALLEY_NOTICE_MS = 120_000  # AWS Spot's two minutes


def open_valley_offer(session: Session, leases: list[Lease]) -> str | None:
    """The capacity offer the simulated owner sells its valley leases in: the GPUs of the leases on
    offer plans, from their first start to a day after their last end; None when there are none."""
    from billing.leases.offers import OFFER_PLANS, open_offer

    sold = [lease for lease in leases if lease.plan in OFFER_PLANS]
    if not sold:
        return None
    start = min(lease.start_ms for lease in sold)
    end = max(lease.end_ms or lease.start_ms for lease in sold) + 24 * 3_600_000
    gpus = sorted({lease.gpu_uuid for lease in sold})
    offer_id = "valley-" + hashlib.sha256(f"{start}/{end}/{','.join(gpus)}".encode()).hexdigest()[:12]
    open_offer(session, offer_id, start_ms=start, end_ms=end, notice_ms=VALLEY_NOTICE_MS, gpus=gpus, actor=FLEET_ACTOR)
    return offer_id


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
