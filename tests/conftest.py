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
from deploy.local.s3_store import S3Store, S3StoreUnavailable, start_s3_store
from deploy.local.stripe_peers import (
    StripePeer,
    StripePeerUnavailable,
    flush_localstripe,
    launch_localstripe,
    launch_stripe_mock,
)

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


@pytest.fixture(scope="session")
def s3_store() -> Iterator[S3Store]:
    """The real S3-compatible object store (SeaweedFS on loopback, deploy/local/s3_store.py), started
    only when a test asks for it; one that cannot start fails every test that needs it."""
    try:
        store = start_s3_store()
    except S3StoreUnavailable as exc:
        pytest.fail(f"the real S3 object store (SeaweedFS) could not start: {exc.one_line()}", pytrace=False)
    yield store
    store.stop()


@pytest.fixture
def s3_lake(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty usage lake `s3://wattmeter/<unique prefix>` on the real store, with this
    process's environment pointing at the store (WATTMETER_S3_ENDPOINT and the AWS variables)."""
    for name, value in s3_store.env().items():
        monkeypatch.setenv(name, value)
    return s3_store.url(f"lake-{uuid.uuid4().hex[:12]}")


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


@pytest.fixture(scope="session")
def stripe_mock() -> Iterator[StripePeer]:
    """Stripe's official mock (stripe-mock, Go) on a free loopback port: it checks every request
    against Stripe's OpenAPI spec and keeps no state. Built once into ~/.cache/wattmeter/bin (`make
    stripe-mock`, or `go install` here when missing). One that cannot start fails
    every test that needs it, naming what is missing."""
    try:
        peer = launch_stripe_mock()
    except StripePeerUnavailable as exc:
        pytest.fail(f"stripe-mock could not start: {exc}", pytrace=False)
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def localstripe() -> Iterator[StripePeer]:
    """localstripe (stateful, in memory), patched to the current invoice API by
    deploy/local/stripe_peers.py, on a free loopback port. Its store is shared by the session:
    a test that counts objects takes `localstripe_clean` instead. One that cannot start fails
    every test that needs it, naming what is missing."""
    try:
        peer = launch_localstripe()
    except StripePeerUnavailable as exc:
        pytest.fail(f"localstripe could not start: {exc}", pytrace=False)
    yield peer
    peer.stop()


@pytest.fixture
def localstripe_clean(localstripe: StripePeer) -> StripePeer:
    """The session's localstripe with its store emptied first (`DELETE /_config/data`): no
    customers, items, invoices or events. Webhook endpoints are not part of the store: a test that
    registers one removes it (`unregister_localstripe_webhook`)."""
    flush_localstripe(localstripe.url)
    return localstripe


# Debian's Chromium driven by Playwright, ONE per session for every browser test module (two
# session fixtures of the same name in two modules would start two sync Playwrights, and the
# second refuses to start inside the first's event loop), and screenshots kept as artifacts.
from tests.support.browser_support import chromium, screenshots  # noqa: E402,F401

# Markers name the real parts a test needs (`pytest -m "not broker"` runs what needs no Kafka);
# they follow from the fixtures a test uses, so a new test cannot forget one.
_PARTS_BY_FIXTURE = {
    "kafka_broker": "broker",
    "postgres_server": "postgres",
    "stripe_mock": "stripe",
    "localstripe": "stripe",
    "chromium": "browser",
    "s3_store": "s3",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("billing_db_url") == "postgresql":
            fixtures.add("postgres_server")
        for fixture, marker in _PARTS_BY_FIXTURE.items():
            if fixture in fixtures:
                item.add_marker(marker)
