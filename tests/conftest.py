"""Session fixtures: one real Kafka broker per test run, started by the project's launcher."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from deploy.local.kafka_broker import BrokerHandle, BrokerUnavailable, start_broker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka_broker() -> BrokerHandle:
    """The real broker: $KAFKA_BOOTSTRAP_SERVERS if set, else Docker, else the Kafka jars.

    A broker that cannot start fails every test that needs it, naming what is missing;
    it is never skipped.
    """
    state_dir = ROOT / ".wattmeter" / f"test-kafka-{os.getpid()}"
    try:
        handle = start_broker(state_dir)
    except BrokerUnavailable as exc:
        pytest.fail(f"the real Kafka broker could not start: {exc}", pytrace=False)
    yield handle
    handle.stop()
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def run_id() -> str:
    """A short unique id so that tests sharing the broker never read each other's data."""
    return uuid.uuid4().hex[:8]
