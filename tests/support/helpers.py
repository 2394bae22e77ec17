"""Small builders shared by the tests."""

from __future__ import annotations

from agents.backends.simulated import SimulatedBackend
from agents.clock import SimulatedClock
from agents.sampler import Sampler
from schemas.samples import NodeSample

# 2026-11-02T00:00:00Z: hour 0, a valley hour in the default calendar
T0 = 1_793_577_600_000


def simulated_samples(
    node_id: str,
    gpus: int,
    ticks: int,
    util: int | None = 50,
    start_ms: int = T0,
    seed: int = 0,
    interval_ms: int = 1000,
) -> tuple[list[NodeSample], SimulatedBackend]:
    """`ticks` samples one interval apart from a simulated node, starting at `start_ms`."""
    backend = SimulatedBackend(gpus=gpus, node_id=node_id, constant_util=util, seed=seed)
    clock = SimulatedClock(start_ms)
    sampler = Sampler(backend, clock, node_id, interval_ms, boot_id=f"boot-{node_id}")
    samples = []
    for _ in range(ticks):
        samples.append(sampler.tick())
        clock.sleep_until_mono(clock.mono_ms() + interval_ms)
    return samples, backend
