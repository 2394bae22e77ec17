"""Builders for the web tests: a small world (three tenants in three time zones, leases, usage written
through the real Parquet sink, invoices rated and finalized, the hourly rollup, an API key for each
role and a revoked one), a client for it, and the app served by a real uvicorn on a loopback port.

    world = build_world(f"sqlite:///{tmp_path}/billing.db", tmp_path / "usage")
    with world.client("acme") as client:                 # in process (ASGI), fast
        client.get("/api/v1/usage", params={"period": "2026-11"})
    with serve(world.app()) as base_url:                  # a real socket
        httpx.get(f"{base_url}/api/v1/invoices", headers=world.auth("finance"))

Every figure a test needs is in the world (`expected` per tenant: exact ms and mJ from the rows
written; `invoices`: each tenant's invoice number), so no test recomputes what the world wrote.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from billing.invoicing.service import finalize_period, run_period
from billing.leases.service import open_lease
from billing.ledger.db import Ledger
from billing.readmodel.hourly import rollup_period
from billing.web.app import create_app
from billing.web.auth import create_key, revoke_key
from schemas.usage import KIND_IDLE
from tests.support.billing_fixtures import DEC_1, HOUR, MINUTE, NOV_1, UsageWriter, ledger_with, minutes

PERIOD = "2026-11"
NEXT_PERIOD = "2026-12"
DAY = 24 * HOUR
ENERGY_PER_MINUTE = 24_000_000  # mJ: 400 W for a minute


@dataclass(frozen=True)
class TenantSpec:
    tenant_id: str
    name: str
    timezone: str


TENANTS = (
    TenantSpec("acme", "Acme Robotics Inc", "America/New_York"),
    TenantSpec("globex", "Globex Handels GmbH", "Europe/Berlin"),
    TenantSpec("initech", "Initech Kabushiki", "Asia/Tokyo"),
)


@dataclass(frozen=True)
class Block:
    """`count` minutes of usage from `start_ms` on one GPU."""

    tenant_id: str
    gpu: str
    model: str
    start_ms: int
    count: int

    @property
    def allocated_ms(self) -> int:
        return self.count * MINUTE

    @property
    def busy_ms(self) -> int:
        return self.count * (MINUTE // 2)  # usage_row: busy = allocated / 2

    @property
    def energy_mj(self) -> int:
        return self.count * ENERGY_PER_MINUTE


# The card (SIMPLE_CARD, UTC calendar): valley 00:00-06:00 on weekdays and all weekend; peak otherwise.
# 2026-11-01 is a Sunday (and New York's fall-back day: 25 local hours).
BLOCKS = (
    # acme, New York: Mon 2 Nov 02:00-05:00Z is valley and falls on the LOCAL day 1 Nov (21:00-24:00 EST)
    Block("acme", "GPU-A1", "H100", NOV_1 + DAY + 2 * HOUR, 180),
    # Tue 3 Nov 14:00-16:00Z: peak, local 3 Nov
    Block("acme", "GPU-A1", "H100", NOV_1 + 2 * DAY + 14 * HOUR, 120),
    # Sat 7 Nov 10:00-11:00Z: valley (weekend), another model
    Block("acme", "GPU-A2", "A100", NOV_1 + 6 * DAY + 10 * HOUR, 60),
    # globex, Berlin: Wed 4 Nov 22:00Z to Thu 5 Nov 01:00Z: 2 h peak then 1 h valley; local 23:00 4 Nov -> 02:00 5 Nov
    Block("globex", "GPU-G1", "H100", NOV_1 + 3 * DAY + 22 * HOUR, 180),
    # initech, Tokyo: Tue 10 Nov 15:00-17:00Z: peak; local 11 Nov 00:00-02:00
    Block("initech", "GPU-I1", "H100", NOV_1 + 9 * DAY + 15 * HOUR, 120),
)
# acme's December draft (a tenant never sees drafts): Thu 3 Dec 12:00Z, 30 minutes peak
DECEMBER = Block("acme", "GPU-A1", "H100", DEC_1 + 2 * DAY + 12 * HOUR, 30)
IDLE = Block("", "GPU-X", "H100", NOV_1 + DAY + 8 * HOUR, 60)  # the fleet's idle time: no tenant's usage


@dataclass(frozen=True)
class Expected:
    allocated_gpu_ms: int
    busy_gpu_ms: int
    energy_mj: int
    records: int
    gpus: frozenset[str]


def expected_for(tenant_id: str, blocks: tuple[Block, ...] = BLOCKS) -> Expected:
    mine = [b for b in blocks if b.tenant_id == tenant_id]
    return Expected(
        allocated_gpu_ms=sum(b.allocated_ms for b in mine),
        busy_gpu_ms=sum(b.busy_ms for b in mine),
        energy_mj=sum(b.energy_mj for b in mine),
        records=sum(b.count for b in mine),
        gpus=frozenset(b.gpu for b in mine),
    )


@dataclass
class World:
    """What `build_world` made: the ledger, the Parquet root, the keys and the expected figures."""

    ledger: Ledger
    usage_root: Path
    keys: dict[str, str]  # tenant id | "finance" | "operator" | "revoked" -> the full key
    key_ids: dict[str, str]  # same names -> the public key id
    invoices: dict[str, str]  # tenant id -> its invoice number for PERIOD
    draft_ids: dict[str, int]  # tenant id -> id of its draft for NEXT_PERIOD
    expected: dict[str, Expected] = field(default_factory=dict)
    tenants: tuple[TenantSpec, ...] = TENANTS
    _app: FastAPI | None = None

    def app(self) -> FastAPI:
        if self._app is None:
            self._app = create_app(self.ledger, self.usage_root)
        return self._app

    def auth(self, who: str | None) -> dict[str, str]:
        """The Authorization header of a key by name (None: no header)."""
        return {} if who is None else {"Authorization": f"Bearer {self.keys[who]}"}

    @contextmanager
    def client(self, who: str | None = None, **headers: str) -> Iterator[TestClient]:
        """An in-process client of the app (no socket) with `who`'s key; server errors come back as
        responses (status 500), never raised, so a test sees what a caller would."""
        with TestClient(self.app(), raise_server_exceptions=False, headers={**self.auth(who), **headers}) as client:
            yield client

    def spec(self, tenant_id: str) -> TenantSpec:
        return next(t for t in self.tenants if t.tenant_id == tenant_id)

    def others(self, tenant_id: str) -> list[TenantSpec]:
        return [t for t in self.tenants if t.tenant_id != tenant_id]


def _lease_id(block: Block) -> str:
    return f"lease-{block.tenant_id}-{block.gpu}"  # what usage_row names it


def build_world(db_url: str, usage_root: Path) -> World:
    """Three tenants (New York, Berlin, Tokyo) on the simple card; their leases; November's usage
    (plus idle fleet time and a December draft for acme) through the real sink; November rated,
    finalized (WM-000001.. in tenant order) and rolled up; December rated (a draft) and rolled up;
    keys for each tenant, finance, operator, and a revoked acme key."""
    ledger = ledger_with(
        db_url,
        tenants={t.tenant_id: {"name": t.name, "timezone": t.timezone, "tax_jurisdiction": "XX"} for t in TENANTS},
    )
    writer = UsageWriter(usage_root)
    with ledger.transaction() as session:
        seen: set[str] = set()
        for block in (*BLOCKS, DECEMBER):
            if _lease_id(block) not in seen:
                seen.add(_lease_id(block))
                open_lease(
                    session, block.tenant_id, block.gpu, NOV_1 - DAY, None, lease_id=_lease_id(block), actor="test"
                )
    for block in BLOCKS:
        writer.write(
            minutes(
                block.tenant_id,
                block.start_ms,
                block.count,
                gpu=block.gpu,
                model=block.model,
                energy_mj=ENERGY_PER_MINUTE,
            )
        )
    writer.write(
        minutes("", IDLE.start_ms, IDLE.count, gpu=IDLE.gpu, kind=KIND_IDLE, lease="", energy_mj=ENERGY_PER_MINUTE)
    )
    run_period(ledger, usage_root, PERIOD, "test")
    finalized = finalize_period(ledger, "test", PERIOD)
    writer.write(minutes("acme", DECEMBER.start_ms, DECEMBER.count, gpu=DECEMBER.gpu, energy_mj=ENERGY_PER_MINUTE))
    run_period(ledger, usage_root, NEXT_PERIOD, "test", tenant_ids=["acme"])
    rollup_period(ledger, usage_root, PERIOD)
    rollup_period(ledger, usage_root, NEXT_PERIOD)

    keys: dict[str, str] = {}
    with ledger.transaction() as session:
        for tenant in TENANTS:
            keys[tenant.tenant_id] = create_key(session, "test", "tenant", tenant.tenant_id)
        keys["finance"] = create_key(session, "test", "finance")
        keys["operator"] = create_key(session, "test", "operator")
        keys["revoked"] = create_key(session, "test", "tenant", "acme")
        revoke_key(session, "test", keys["revoked"].split("_")[1])
        from billing.invoicing.service import list_invoices

        drafts = {i.tenant_id: i.id for i in list_invoices(session, NEXT_PERIOD) if i.status == "draft"}
    return World(
        ledger=ledger,
        usage_root=usage_root,
        keys=keys,
        key_ids={name: key.split("_")[1] for name, key in keys.items()},
        invoices={invoice.tenant_id: str(invoice.number) for invoice in finalized},
        draft_ids=drafts,
        expected={t.tenant_id: expected_for(t.tenant_id) for t in TENANTS},
    )


# -- a real server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(app: Any, host: str = "127.0.0.1", timeout_s: float = 20.0, **config: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free loopback port; yields its base URL
    ("http://127.0.0.1:PORT") once it accepts connections, and stops it on exit.

    The socket is bound here first and handed to uvicorn, so there is no race for the port.
    `config` goes to `uvicorn.Config` (log_level defaults to "warning")."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{port} within {timeout_s:.0f} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
