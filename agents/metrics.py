"""The agent's Prometheus metrics (prometheus-client; served on --metrics-port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.samples_taken = Counter("wattmeter_agent_samples_taken", "Node samples taken", registry=r)
        self.samples_sent = Counter("wattmeter_agent_samples_sent", "Node samples acknowledged by Kafka", registry=r)
        self.samples_dropped = Counter(
            "wattmeter_agent_samples_dropped",
            "Node samples dropped because the spool hit its size or age bound",
            registry=r,
        )
        self.nvml_errors = Counter("wattmeter_agent_nvml_errors", "GPU reads that failed", ["gpu_uuid"], registry=r)
        self.clock_steps = Counter(
            "wattmeter_agent_clock_steps",
            "Ticks where the wall clock moved differently from the monotonic clock",
            registry=r,
        )
        self.send_errors = Counter("wattmeter_agent_send_errors", "Kafka send attempts that failed", registry=r)
        self.kafka_up = Gauge(
            "wattmeter_agent_kafka_up", "1 while Kafka acknowledges sends, 0 while it is unreachable", registry=r
        )
        self.kafka_outages = Counter(
            "wattmeter_agent_kafka_outages", "Times Kafka became unreachable (samples spooled meanwhile)", registry=r
        )
        self.spool_bytes = Gauge("wattmeter_agent_spool_bytes", "Bytes waiting in the spool", registry=r)
        self.spool_rows = Gauge("wattmeter_agent_spool_rows", "Samples waiting in the spool", registry=r)
        self.send_latency = Histogram(
            "wattmeter_agent_send_latency_seconds",
            "From handing a batch to Kafka to its acknowledgement",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
