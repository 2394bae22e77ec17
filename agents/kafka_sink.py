"""Kafka adapter of the agent: kafka-python producer with acks=all and idempotence."""

from __future__ import annotations

import logging
from typing import Any

from schemas.samples import NodeSample
from schemas.topics import GPU_SAMPLES

log = logging.getLogger(__name__)


def producer_config(bootstrap: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Durable, throughput-tuned defaults; `overrides` passes TLS/SASL settings through
    (security_protocol, ssl_cafile, sasl_mechanism, sasl_plain_username, ...).

    A send is retried until Kafka takes it: no retry limit and a delivery timeout of
    ~25 days (longer than the spool keeps anything), so no batch expires during an outage.
    An expired batch would fail while later ones of the same partition could still
    succeed under a new producer id, and its resend would land behind them."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": "lz4",
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 5,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 2**31 - 1,
        "client_id": "wattmeter-agent",
    }
    config.update(overrides or {})
    return config


class KafkaSampleSink:
    """Sends each NodeSample to `gpu.samples`, keyed by node_id (per-node order)."""

    def __init__(self, bootstrap: str, topic: str = GPU_SAMPLES, overrides: dict[str, Any] | None = None) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self._producer = KafkaProducer(**producer_config(bootstrap, overrides))

    def send(self, sample: NodeSample) -> Any:
        return self._producer.send(self.topic, key=sample.node_id.encode(), value=sample.to_json_bytes())

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()
