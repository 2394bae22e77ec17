"""Session fixtures: the real parts (one Kafka broker, one PostgreSQL server per test run),
started by the project's own launchers in deploy/local; never skipped when they cannot start."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.kafka_broker import BrokerHandle, BrokerUnavailable, start_broker
from deploy.local.postgres import PostgresServer, PostgresUnavailable, start_postgres

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[BrokerHandle]:
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The real PostgreSQL (15+) server, in a temporary folder, started only when a test asks
    for it. One that cannot start fails every test that needs it, naming what is missing."""
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        pytest.fail(f"the real PostgreSQL server could not start: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A SQLAlchemy URL (postgresql+psycopg://...) of a fresh, empty database of its own,
    dropped after the test (connections still open to it are closed)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def billing_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The billing database URL, once on a SQLite file and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/billing.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def run_id() -> str:
    """A short unique id so that tests sharing the broker never read each other's data."""
    return uuid.uuid4().hex[:8]
