"""Security of the JSON API: a tenant key never reaches another tenant's usage, invoices or statements
(by query, path or tampered reference: 404, or 403 for what its role may not do, and nothing of the
other tenant in the answer); a wrong, malformed, missing or revoked key is a 401; finance sees every
tenant; an operator key reads no tenant's usage, invoices or statements (403); only the operator
manages leases. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from billing.readmodel.queries import tenant_invoices
from billing.web.auth import NOT_TENANT_DATA
from tests.support.web_support import PERIOD, TENANTS, World, build_world, serve

API = "/api/v1"
NOT_FOUND = {"error": "not found"}
NO_ROUTE = NOT_FOUND  # a path no route matches: the same body as an object that does not exist
UNAUTHORIZED = {"error": "a valid API key is required (Authorization: Bearer wm_...)"}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None

    def send(self, client: TestClient | httpx.Client, headers: dict[str, str] | None = None) -> httpx.Response:
        return client.request(self.method, API + self.path, params=self.params, json=self.body, headers=headers)


def every_endpoint(world: World) -> list[Call]:
    """One well-formed call of every endpoint of /api/v1 (what a 401 must refuse)."""
    return [
        Call("GET", "/usage", {"period": PERIOD}),
        Call("GET", "/usage/gpus", {"period": PERIOD}),
        Call("GET", "/invoices"),
        Call("GET", f"/invoices/{world.invoices['acme']}"),
        Call("GET", f"/statements/acme/{PERIOD}"),
        Call("GET", f"/statements/acme/{PERIOD}.csv"),
        Call("GET", f"/statements/acme/{PERIOD}.pdf"),
        Call("GET", "/leases"),
        Call("POST", "/leases", body={"tenant_id": "acme", "gpu_uuid": "GPU-S", "start": "2027-01-01T00:00:00Z"}),
        Call("POST", "/leases/lease-acme-GPU-A1/end", body={"end": "2027-01-01T00:00:00Z"}),
    ]


def schema_paths(world: World) -> set[tuple[str, str]]:
    with world.client() as client:
        paths = client.get(API + "/openapi.json").json()["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def cross_tenant_calls(world: World, me: str, other: str) -> list[Call]:
    """Every way a tenant key `me` could ask for `other`'s data: query, path, tampered references."""
    number = world.invoices[other]
    with world.ledger.transaction() as session:
        other_ids = [str(i.id) for i in tenant_invoices(session, other)]
        my_drafts = [str(world.draft_ids[t]) for t in world.draft_ids]
    start, end = "2026-11-01", "2026-11-30"
    calls = [
        Call("GET", "/usage", {"tenant": other, "period": PERIOD}),
        Call("GET", "/usage", {"tenant": other, "from": start, "to": end}),
        Call("GET", "/usage", {"tenant": other, "period": PERIOD, "grain": "hour", "by": "gpu"}),
        Call("GET", "/usage/gpus", {"tenant": other, "period": PERIOD}),
        Call("GET", "/usage/gpus", {"tenant": other, "from": start, "to": end}),
        Call("GET", "/invoices", {"tenant": other}),
        Call("GET", "/invoices", {"tenant": other, "period": PERIOD, "status": "finalized"}),
        Call("GET", f"/invoices/{number}"),
        Call("GET", f"/invoices/{number.lower()}"),
        Call("GET", f"/invoices/{number} "),
        Call("GET", f"/invoices/%20{number}"),
        Call("GET", f"/invoices/{number}%00"),
        Call("GET", f"/invoices/{number}?tenant={me}"),
        Call("GET", f"/statements/{other}/{PERIOD}"),
        Call("GET", f"/statements/{other}/{PERIOD}.csv"),
        Call("GET", f"/statements/{other}/{PERIOD}.pdf"),
        Call("GET", f"/statements/{other.upper()}/{PERIOD}.csv"),
        Call("GET", f"/statements/{other}/2026-12"),
        Call("GET", f"/statements/{other.upper()}/{PERIOD}"),
        Call("GET", f"/statements/{other}%00/{PERIOD}"),
        Call("GET", f"/statements/{me}%2F..%2F{other}/{PERIOD}"),
    ]
    for invoice_id in other_ids + my_drafts:  # ids, with leading zeros, and drafts (never shown to a tenant)
        calls += [Call("GET", f"/invoices/{invoice_id}"), Call("GET", f"/invoices/000{invoice_id}")]
    return calls


def secrets_of(world: World, tenant_id: str) -> list[str]:
    """What must never appear in an answer to another tenant: id, name, invoice numbers, amounts, GPUs."""
    spec = world.spec(tenant_id)
    out = [tenant_id, spec.name, *world.expected[tenant_id].gpus]
    with world.ledger.transaction() as session:
        for invoice in tenant_invoices(session, tenant_id):
            if invoice.number:
                out.append(invoice.number)
            out += [str(invoice.total), str(invoice.amount_due), str(invoice.subtotal)]
    return out


def assert_reveals_nothing(response: httpx.Response, secrets: list[str], call: Call) -> None:
    text = response.text
    for secret in secrets:
        assert secret.lower() not in text.lower(), f"{call}: {secret!r} leaked in {text}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("web-security")
    built = build_world(f"sqlite:///{root}/billing.db", root / "usage")
    yield built
    built.ledger.dispose()


def schema_calls(world: World) -> list[Call]:
    """A call of every operation in the OpenAPI document (this module's and the reports'), path
    parameters filled with plausible values and query parameters naming acme's month."""
    with world.client() as client:
        paths = client.get(API + "/openapi.json").json()["paths"]
    fill = {"number": world.invoices["acme"], "tenant": "acme", "period": PERIOD, "lease_id": "lease-acme-GPU-A1"}
    calls = []
    for path, operations in sorted(paths.items()):
        concrete = path.removeprefix(API)
        for name, value in fill.items():
            concrete = concrete.replace("{" + name + "}", value)
        concrete = re.sub(r"\{[^}]+\}", "x", concrete)
        for method, operation in operations.items():
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            params = {k: v for k, v in (("tenant", "acme"), ("period", PERIOD)) if k in names}
            body = {"tenant_id": "acme", "gpu_uuid": "GPU-S", "start": "2027-01-01", "end": "2027-01-02"}
            calls.append(Call(method.upper(), concrete, params or None, body if method == "post" else None))
    return calls


def test_the_cases_cover_every_endpoint_of_this_api(world: World) -> None:
    from billing.web import api

    mine = {
        (method, str(getattr(route, "path", "")))
        for route in api.router.routes
        for method in getattr(route, "methods", ())
    }

    def template(path: str) -> str:
        return re.sub(r"\{[^}]+\}", "*", path)

    covered = {(c.method, template(c.path)) for c in every_endpoint(world)}
    covered = {
        (m, p.replace(world.invoices["acme"], "*").replace("acme/" + PERIOD, "*/*").replace("lease-acme-GPU-A1", "*"))
        for m, p in covered
    }
    assert {(m, template(p)) for m, p in mine} <= covered


def test_no_tenant_reaches_another_tenant(billing_db_url: str, tmp_path: Path) -> None:
    """Every tenant against every other, on SQLite and PostgreSQL: 404 (or 403), the very body an
    unknown object gets, and nothing of the other tenant in it."""
    world = build_world(billing_db_url, tmp_path / "usage")
    try:
        for me in TENANTS:
            with world.client(me.tenant_id) as client:
                for other in world.others(me.tenant_id):
                    secrets = secrets_of(world, other.tenant_id)
                    for call in cross_tenant_calls(world, me.tenant_id, other.tenant_id):
                        response = call.send(client)
                        assert response.status_code in (403, 404, 422), (call, response.status_code, response.text)
                        if response.status_code == 404:  # ours, or no route at all (a path with a slash)
                            assert response.json() in (NOT_FOUND, NO_ROUTE), (call, response.text)
                        assert_reveals_nothing(response, secrets, call)
    finally:
        world.ledger.dispose()


def test_another_tenants_invoice_looks_like_none_at_all(world: World) -> None:
    with world.client("acme") as client:
        theirs = client.get(f"{API}/invoices/{world.invoices['globex']}")
        nothing = client.get(f"{API}/invoices/WM-999999")
        draft = client.get(f"{API}/invoices/{world.draft_ids['acme']}")  # its own draft: not issued yet
        stranger = client.get(f"{API}/statements/globex/{PERIOD}")
        unknown = client.get(f"{API}/statements/no-such-tenant/{PERIOD}")
    for response in (theirs, nothing, draft, stranger, unknown):
        assert response.status_code == 404
        assert response.json() == NOT_FOUND
        assert response.headers["content-type"] == "application/json"
        assert response.headers["content-length"] == nothing.headers["content-length"]


def test_own_data_with_the_own_name_is_served(world: World) -> None:
    with world.client("globex") as client:
        for call in (
            Call("GET", "/usage", {"tenant": "globex", "period": PERIOD}),
            Call("GET", "/usage/gpus", {"tenant": "globex", "period": PERIOD}),
            Call("GET", "/invoices", {"tenant": "globex"}),
            Call("GET", f"/invoices/{world.invoices['globex']}"),
            Call("GET", f"/statements/globex/{PERIOD}"),
        ):
            response = call.send(client)
            assert response.status_code == 200, (call, response.text)
            for other in world.others("globex"):
                assert_reveals_nothing(response, [other.name, world.invoices[other.tenant_id]], call)
        listed = client.get(API + "/invoices").json()["invoices"]
        assert {i["tenant_id"] for i in listed} == {"globex"}


def bad_credentials(world: World) -> dict[str, dict[str, str]]:
    key_id = world.key_ids["acme"]
    secret = world.keys["acme"].split("_", 2)[2]
    return {
        "missing": {},
        "revoked": world.auth("revoked"),
        "wrong secret": {"Authorization": f"Bearer wm_{key_id}_{secret[:-2]}xx"},
        "unknown id": {"Authorization": f"Bearer wm_0000000000000000_{secret}"},
        "no prefix": {"Authorization": f"Bearer {key_id}_{secret}"},
        "other prefix": {"Authorization": f"Bearer sk_{key_id}_{secret}"},
        "truncated": {"Authorization": f"Bearer wm_{key_id}"},
        "bare bearer": {"Authorization": "Bearer"},
        "garbage": {"Authorization": "Bearer wm_%%%_!!!"},
        "sql": {"Authorization": "Bearer wm_' OR '1'='1_x"},
        "basic": {"Authorization": f"Basic {world.keys['acme']}"},
        "bad cookie": {"Cookie": "wattmeter_key=wm_nope_nope"},
        "revoked cookie": {"Cookie": f"wattmeter_key={world.keys['revoked']}"},
        "key id only": {"Authorization": f"Bearer {key_id}"},
        "finance id, acme secret": {"Authorization": f"Bearer wm_{world.key_ids['finance']}_{secret}"},
    }


def test_bad_keys_are_401_on_every_endpoint(world: World) -> None:
    """Every operation of the OpenAPI document (the reports' too) and every way a key can be bad."""
    calls = schema_calls(world)
    assert len(calls) >= len(every_endpoint(world))
    with TestClient(world.app(), raise_server_exceptions=False) as client:
        for name, headers in bad_credentials(world).items():
            for call in calls:
                response = call.send(client, headers)
                assert response.status_code == 401, (name, call, response.text)
                assert response.json() == UNAUTHORIZED, (name, call)
                assert response.headers["www-authenticate"] == "Bearer"


def test_bad_keys_over_a_real_socket(world: World) -> None:
    with serve(world.app()) as base, httpx.Client(base_url=base, timeout=30) as client:
        for name, headers in bad_credentials(world).items():
            response = client.get(f"{API}/invoices/{world.invoices['acme']}", headers=headers)
            assert response.status_code == 401 and response.json() == UNAUTHORIZED, name
        theirs = client.get(f"{API}/invoices/{world.invoices['globex']}", headers=world.auth("acme"))
        assert theirs.status_code == 404 and theirs.json() == NOT_FOUND
        mine = client.get(f"{API}/invoices/{world.invoices['acme']}", headers=world.auth("acme"))
        assert mine.status_code == 200 and mine.json()["tenant_id"] == "acme"
        # the portal's cookie is a key like the header
        cookie = client.get(f"{API}/invoices", headers={"Cookie": f"wattmeter_key={world.keys['initech']}"})
        assert {i["tenant_id"] for i in cookie.json()["invoices"]} == {"initech"}


def test_finance_sees_every_tenant(world: World) -> None:
    with world.client("finance") as client:
        listed = client.get(API + "/invoices").json()["invoices"]
        assert {i["tenant_id"] for i in listed} == {t.tenant_id for t in TENANTS}
        for spec in TENANTS:
            usage = client.get(API + "/usage", params={"tenant": spec.tenant_id, "period": PERIOD})
            assert usage.status_code == 200
            assert usage.json()["total"]["allocated_gpu_ms"] == world.expected[spec.tenant_id].allocated_gpu_ms
            assert client.get(f"{API}/invoices/{world.invoices[spec.tenant_id]}").status_code == 200
            assert client.get(f"{API}/statements/{spec.tenant_id}/{PERIOD}").status_code == 200
            assert (
                client.get(API + "/usage/gpus", params={"tenant": spec.tenant_id, "period": PERIOD}).status_code == 200
            )
        assert client.get(f"{API}/statements/no-such-tenant/{PERIOD}").json() == NOT_FOUND
        assert client.get(API + "/usage", params={"tenant": "no-such-tenant", "period": PERIOD}).json() == NOT_FOUND
        assert client.get(API + "/leases").status_code == 200


def test_an_operator_key_reads_no_tenants_billing_data(world: World) -> None:
    """The operator's role is the fleet (the yield report, the leases): every tenant's usage, invoices and
    statement, asked every way a tenant key could ask for another's, is the one 403 (before any look-up:
    the same for what exists and what does not), with nothing of the tenant in it."""
    with world.client("operator") as client:
        for spec in TENANTS:
            secrets = secrets_of(world, spec.tenant_id)
            me = world.others(spec.tenant_id)[0].tenant_id
            for call in cross_tenant_calls(world, me, spec.tenant_id):
                response = call.send(client)
                assert response.status_code in (403, 404, 422), (call, response.status_code, response.text)
                if response.status_code == 403:
                    assert response.json() == {"error": NOT_TENANT_DATA}, (call, response.text)
                if response.status_code == 404:  # only a path no route matches
                    assert "%2F" in call.path and response.json() == NO_ROUTE, (call, response.text)
                assert_reveals_nothing(response, secrets, call)
        assert client.get(API + "/invoices").json() == {"error": NOT_TENANT_DATA}
        assert client.get(API + "/leases").status_code == 200  # what it is for


def test_only_the_operator_manages_leases(world: World) -> None:
    open_call = Call("POST", "/leases", body={"tenant_id": "acme", "gpu_uuid": "GPU-OP", "start": "2027-02-01"})
    end_call = Call("POST", "/leases/lease-acme-GPU-A1/end", body={"end": "2027-02-01"})
    for who in ("acme", "globex", "finance"):
        with world.client(who) as client:
            for call in (open_call, end_call):
                response = call.send(client)
                assert response.status_code == 403, (who, call, response.text)
                assert response.json() == {"error": "this needs an operator key"}
    with world.client("acme") as client:
        listing = client.get(API + "/leases", params={"tenant": "acme"})
        assert listing.status_code == 403  # a tenant key does not list leases, not even its own
        assert_reveals_nothing(listing, ["GPU-A1", "lease-"], Call("GET", "/leases"))
    with world.client("operator") as client:
        opened = open_call.send(client)
        assert opened.status_code == 201, opened.text
        ended = Call("POST", f"/leases/{opened.json()['lease_id']}/end", body={"end": "2027-02-02"}).send(client)
        assert ended.status_code == 200 and ended.json()["end_ms"] is not None
    with world.ledger.transaction() as session:
        from billing.leases.service import list_leases

        assert list_leases(session, gpu_uuid="GPU-A1")[0].end_ms is None  # nobody else ended it


def test_no_endpoint_of_the_document_tells_a_tenant_of_another(world: World) -> None:
    """Beyond this module's cases: every operation of the OpenAPI document (the yield report, the
    reconciliation, ...), asked by each tenant key for another tenant, answers without a server error
    and without a word of the other tenant."""
    for me in TENANTS:
        with world.client(me.tenant_id) as client:
            for other in world.others(me.tenant_id):
                secrets = secrets_of(world, other.tenant_id)
                for call in schema_calls(world):
                    swapped = Call(
                        call.method,
                        call.path.replace("/acme/", f"/{other.tenant_id}/"),
                        {**(call.params or {}), "tenant": other.tenant_id},
                        None if call.body is None else {**call.body, "tenant_id": other.tenant_id},
                    )
                    response = swapped.send(client)
                    assert response.status_code < 500, (swapped, response.text)
                    assert_reveals_nothing(response, secrets, swapped)
