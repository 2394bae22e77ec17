"""Adapter: the billing database's engine, its migrations and its sessions.

`WATTMETER_BILLING_DB` is a SQLAlchemy URL: a SQLite file by default, PostgreSQL
(`postgresql+psycopg://...`) in production. Every command migrates to the newest schema
first (Alembic, under an advisory lock on PostgreSQL so that two processes starting at once
do not race), then works in short transactions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger.errors import DatabaseUnavailable
from billing.ledger.models import AuditEntry

DEFAULT_URL = "sqlite:///.wattmeter/billing.db"
MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATE_LOCK = 7_412_031  # pg_advisory_lock key for schema upgrades


def database_url(url: str | None = None) -> str:
    return url or os.environ.get("WATTMETER_BILLING_DB") or DEFAULT_URL


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a busy timeout so that
    concurrent writers wait instead of failing."""
    url = database_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable(f"WATTMETER_BILLING_DB={url!r} is not a database URL") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()
            dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN itself

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn: Any) -> None:
            # take the write lock at BEGIN: read-then-write transactions never deadlock
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(f"cannot open the billing database {engine.url!r}: {reason}") from None


class Ledger:
    """The database of one process: an engine, migrated, and a session factory."""

    def __init__(self, url: str | None = None, *, auto_migrate: bool = True) -> None:
        self.engine = make_engine(url)
        if auto_migrate:
            migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def audit(session: Session, actor: str, action: str, entity: str, entity_id: str, **detail: Any) -> None:
    """Append one entry to the audit log, in the caller's transaction."""
    session.add(
        AuditEntry(at_ms=now_ms(), actor=actor, action=action, entity=entity, entity_id=entity_id, detail=detail)
    )


def default_actor() -> str:
    return os.environ.get("WATTMETER_ACTOR") or os.environ.get("USER") or "unknown"
