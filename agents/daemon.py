"""Wiring of the node agent: backend -> sampler -> spool -> sender -> Kafka.

The sampling thread only ever writes to the local spool, so a slow or absent broker
never delays a tick; the sender thread drains the spool (one producer, waiting out
outages of any length: agents/sender.py). On SIGTERM the sampler stops, the sender
drains what it can within a deadline, and the rest stays on disk for the next start.
A simulated backend keeps its "driver" state (energy counters) beside the spool, so its
counters survive restarts and kills as NVML's do (agents/backends/simulated.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from agents.backends.base import GpuBackend
from agents.backends.simulated import SimulatedBackend
from agents.clock import Clock, SystemClock
from agents.config import AgentConfig
from agents.hints import HintsFile
from agents.kafka_sink import producer_config
from agents.metrics import AgentMetrics
from agents.sampler import Sampler
from agents.sender import SpoolSender
from agents.spool import Spool
from schemas.samples import NodeSample
from schemas.units import MS_PER_SECOND

log = logging.getLogger(__name__)

SIMULATED_STATE_FILE = "simulated-gpus.json"  # beside the spool: the simulated driver's counters


def build_backend(config: AgentConfig) -> GpuBackend:
    if config.backend == "simulated":
        return SimulatedBackend(
            gpus=config.gpus,
            model=config.model,
            seed=config.seed,
            node_id=config.node_id,
            mig_per_gpu=config.mig_per_gpu,
        )
    if config.backend == "replay":
        from agents.backends.replay import ReplayBackend

        return ReplayBackend.from_config(config)
    from agents.backends.nvml import NvmlBackend

    return NvmlBackend()


def replay_timestamps(backend: Any) -> list[int]:
    """The recorded times of a replay backend's ticks, in trace order."""
    return [ts for ts, _ in backend.ticks()]


class SpoolSink:
    """The sampler's sink in the daemon: every sample goes to disk first."""

    def __init__(self, spool: Spool, metrics: AgentMetrics, hints: HintsFile | None = None) -> None:
        self.spool = spool
        self.metrics = metrics
        self.hints = hints
        self._dropped_reported = 0

    def send(self, sample: NodeSample) -> None:
        hints = self.hints.current() if self.hints else {}
        for reading in sample.gpus:
            if reading.error is not None:
                self.metrics.nvml_errors.labels(reading.gpu_uuid).inc()
            if hints:
                reading.hint = hints.get(reading.gpu_uuid)
        self.spool.append(sample.node_id.encode(), sample.to_json_bytes(), sample.ts_ms)
        self.metrics.samples_taken.inc()
        self.metrics.spool_rows.set(self.spool.pending_rows)
        self.metrics.spool_bytes.set(self.spool.pending_bytes)
        if self.spool.dropped > self._dropped_reported:
            self.metrics.samples_dropped.inc(self.spool.dropped - self._dropped_reported)
            self._dropped_reported = self.spool.dropped

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class AgentDaemon:
    def __init__(
        self,
        config: AgentConfig,
        backend: GpuBackend | None = None,
        clock: Clock | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.config = config
        self.backend = backend or build_backend(config)
        if isinstance(self.backend, SimulatedBackend) and self.backend.state_path is None:
            self.backend.keep_state(config.spool_dir / SIMULATED_STATE_FILE)
        self.clock = clock or SystemClock()
        self.metrics = metrics or AgentMetrics()
        self.spool = Spool(
            config.spool_dir / "spool.sqlite3", config.spool_max_bytes, config.spool_max_age_s * MS_PER_SECOND
        )
        self.sampler = Sampler(self.backend, self.clock, config.node_id, config.interval_ms)
        self.sink = SpoolSink(self.spool, self.metrics, HintsFile(config.hints_file) if config.hints_file else None)
        self.stop_event = threading.Event()
        self._sender_thread: threading.Thread | None = None

    def start_sender(self) -> None:
        if not self.config.bootstrap:
            return
        sender = SpoolSender(self.spool, producer_config(self.config.bootstrap, self._kafka_overrides()), self.metrics)
        self._sender_stop = threading.Event()
        self._sender_thread = threading.Thread(
            target=sender.run, args=(self._sender_stop,), name="spool-sender", daemon=True
        )
        self._sender_thread.start()

    def _kafka_overrides(self) -> dict[str, Any]:
        overrides = {k: v for k, v in self.config.kafka.items() if k != "bootstrap_servers"}
        overrides.setdefault("max_block_ms", 5000)  # send() waiting for metadata (only before the first answer)
        overrides.setdefault("bootstrap_timeout_ms", 5000)  # creating the producer: keeps a SIGTERM drain short
        overrides.setdefault("reconnect_backoff_max_ms", 2000)
        return overrides

    def run(self, ticks: int | None = None, on_sample: Callable[[NodeSample], None] | None = None) -> int:
        """Sample until stopped (or `ticks` taken), then drain and close; returns ticks taken."""
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port)
        self.start_sender()
        if self.config.backend == "replay":  # it follows the log's own cadence, not interval_ms
            doing = self.backend.describe()  # type: ignore[attr-defined]
        else:
            doing = f"sampling every {self.config.interval_ms} ms"
        log.info(
            "agent %s %s (boot %s, %d samples spooled from before)",
            self.config.node_id,
            doing,
            self.sampler.boot_id,
            self.spool.pending_rows,
        )
        try:
            if self.config.backend == "replay":
                timestamps = replay_timestamps(self.backend)
                taken = self.sampler.replay(self.sink, timestamps, self.config.speed, self.stop_event, ticks, on_sample)
            else:
                taken = self.sampler.run(self.sink, ticks=ticks, stop=self.stop_event, on_sample=on_sample)
        finally:
            self.shutdown()
        return taken

    def stop(self) -> None:
        self.stop_event.set()

    def shutdown(self, drain_timeout_s: float = 20) -> None:
        """Stop sending after a bounded drain; close the spool and the backend."""
        if self._sender_thread is not None:
            self._sender_stop.set()
            self._sender_thread.join(drain_timeout_s + 10)
            self._sender_thread = None
        self.backend.close()
        self.spool.close()
