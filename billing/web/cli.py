"""`wattmeter-billing keys ...` and `wattmeter-billing serve`.

keys create --role tenant --tenant acme [--label "acme portal"]   prints the key once
keys create --role finance | operator
keys revoke KEY_ID
keys list
serve [--host 127.0.0.1] [--port 8400]      the API (/api/v1, OpenAPI at /api/v1/openapi.json) and the portal
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from billing.ledger.db import Ledger


def add_web_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    keys = subparsers.add_parser(
        "keys",
        parents=[common],
        help="create, revoke or list API keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys.add_argument("action", choices=["create", "revoke", "list"])
    keys.add_argument("key_id", nargs="?", help="revoke: the key's id (the part after wm_)")
    keys.add_argument("--role", choices=["tenant", "finance", "operator"])
    keys.add_argument("--tenant")
    keys.add_argument("--label", default="")
    keys.set_defaults(handler=run_keys_command)

    serve = subparsers.add_parser("serve", parents=[common], help="serve the API and the portal (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8400)
    serve.set_defaults(handler=run_serve_command)


def run_keys_command(args: argparse.Namespace, ledger: Ledger) -> int:
    from billing.ledger.errors import LedgerError
    from billing.web.auth import create_key, list_keys, revoke_key

    with ledger.transaction() as session:
        if args.action == "create":
            if not args.role:
                raise LedgerError("keys create needs --role tenant|finance|operator")
            key = create_key(session, args.actor, args.role, args.tenant, args.label)
            print(json.dumps({"key": key, "role": args.role, "tenant_id": args.tenant}) if args.json else key)
            return 0
        if args.action == "revoke":
            if not args.key_id:
                raise LedgerError("keys revoke needs the key's id")
            revoke_key(session, args.actor, args.key_id)
            print(f"revoked {args.key_id}")
            return 0
        rows = [
            {
                "key_id": k.key_id,
                "role": k.role,
                "tenant_id": k.tenant_id,
                "label": k.label,
                "created_ms": k.created_ms,
                "revoked_ms": k.revoked_ms,
            }
            for k in list_keys(session)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = "revoked" if r["revoked_ms"] else "active"
            print(f"{r['key_id']}  {r['role']:<8} {r['tenant_id'] or '-':<16} {state:<8} {r['label']}")
    return 0


def run_serve_command(args: argparse.Namespace, ledger: Ledger) -> int:
    import uvicorn

    from billing.web.app import create_app

    app = create_app(ledger, args.usage_dir, os.environ.get("WATTMETER_STRIPE_WEBHOOK_SECRET"))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
