"""API keys and roles, and the one place where a request is scoped to what its key may see.

A key is `wm_<key_id>_<secret>`: `key_id` is public (it names the key in lists and the audit
log), only the SHA-256 of the secret is stored (the secret has 192 bits of entropy, so a fast
hash is as strong as a slow one here) and it is compared in constant time. It is shown once,
at creation. Roles:

- tenant: reads only its own tenant's usage, invoices and statements;
- finance: reads every tenant's usage, invoices and statements, the reconciliation, the month at a
  glance, the yield report and the leases;
- operator: the fleet: the yield report, and lists, opens and ends leases. No tenant's billing data
  (usage, invoices, statements): a 403, whichever tenant or object it names.

Scoping is done here and only here (`scope_tenant`, `check_owner`, `scope_leases`, `require_role`):
an endpoint asks for the tenant it may serve and never filters by itself. A tenant asking for
another tenant's object gets the same 404 as for an object that does not exist, so an error never
reveals that it exists.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.ledger.db import audit, now_ms
from billing.ledger.errors import LedgerError
from billing.ledger.models import ApiKey, Tenant
from billing.readmodel.errors import NotFound as NotFound

ROLES = ("tenant", "finance", "operator")
KEY_PREFIX = "wm"
TENANT_DATA_ROLES = ("tenant", "finance")  # a tenant's usage, invoices and statements
LEASE_READ_ROLES = ("operator", "finance")
LEASE_WRITE_ROLES = ("operator",)
FLEET_ROLES = ("operator", "finance")  # the yield report
FINANCE_ROLES = ("finance",)  # the month at a glance, the reconciliation
NOT_TENANT_DATA = "a tenant's usage, invoices and statements need a tenant or finance key"


class AuthError(Exception):
    """No key, a malformed key, an unknown or revoked key: 401."""


class Forbidden(Exception):
    """A valid key whose role may not do this: 403."""


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    tenant_id: str | None  # set for the tenant role only

    @property
    def is_tenant(self) -> bool:
        return self.role == "tenant"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, actor: str, role: str, tenant_id: str | None = None, label: str = "") -> str:
    """A new key; the returned string is the only time its secret exists outside the caller."""
    if role not in ROLES:
        raise LedgerError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if (role == "tenant") != (tenant_id is not None):
        raise LedgerError("a tenant key needs --tenant, and only a tenant key has one")
    if tenant_id is not None and session.get(Tenant, tenant_id) is None:
        raise LedgerError(f"unknown tenant {tenant_id!r}")
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(24)
    session.add(
        ApiKey(
            key_id=key_id, secret_hash=_digest(secret), role=role, tenant_id=tenant_id, label=label, created_ms=now_ms()
        )
    )
    audit(session, actor, "api_key.create", "api_key", key_id, role=role, tenant_id=tenant_id, label=label)
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def revoke_key(session: Session, actor: str, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise LedgerError(f"no API key {key_id!r}")
    if key.revoked_ms is None:
        key.revoked_ms = now_ms()
        audit(session, actor, "api_key.revoke", "api_key", key_id)
    return key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_ms)))


def authenticate(session: Session, presented: str | None) -> Principal:
    """The principal of a presented key, or AuthError (one message for every failure: nothing to probe)."""
    failure = AuthError("a valid API key is required (Authorization: Bearer wm_...)")
    if not presented:
        raise failure
    parts = presented.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        raise failure
    key = session.get(ApiKey, parts[1])
    if key is None or key.revoked_ms is not None or not hmac.compare_digest(key.secret_hash, _digest(parts[2])):
        raise failure
    return Principal(key.key_id, key.role, key.tenant_id)


def require_role(principal: Principal, *roles: str) -> None:
    if principal.role not in roles:
        names = " or ".join(roles)
        raise Forbidden(f"this needs {'an' if names[0] in 'aeiou' else 'a'} {names} key")


def reads_tenant_data(principal: Principal) -> bool:
    """Whether this key may read any tenant's usage, invoices and statements (operators: no)."""
    return principal.role in TENANT_DATA_ROLES


def require_tenant_data(principal: Principal) -> None:
    """Forbidden (403) for a key whose role reads no tenant's billing data (operator keys): asked before
    any object is looked up, so the answer is the same whether it exists or not."""
    if not reads_tenant_data(principal):
        raise Forbidden(NOT_TENANT_DATA)


def scope_tenant(principal: Principal, requested: str | None) -> str | None:
    """The tenant whose billing data (usage, invoices, statements) a request may read: a tenant key only
    its own (another tenant: NotFound, as if it did not exist); a finance key any tenant, or all (None);
    an operator key none (Forbidden)."""
    require_tenant_data(principal)
    if principal.is_tenant:
        if requested is not None and requested != principal.tenant_id:
            raise NotFound("not found")
        return principal.tenant_id
    return requested


def check_owner(principal: Principal, owner_tenant_id: str) -> None:
    """For an object fetched by id or number: a tenant key may only see its own (else NotFound); an
    operator key none (Forbidden)."""
    require_tenant_data(principal)
    if principal.is_tenant and owner_tenant_id != principal.tenant_id:
        raise NotFound("not found")


def scope_leases(principal: Principal, requested: str | None) -> str | None:
    """The tenant whose leases a listing may show: operator and finance keys any (or all, None); a tenant
    key none (Forbidden: leases are the fleet's schedule, not a tenant's billing data)."""
    require_role(principal, *LEASE_READ_ROLES)
    return requested
