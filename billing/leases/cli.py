"""Wiring: the `leases` commands of `wattmeter-billing` (also `python -m billing.leases.cli leases ...`).

  leases open --tenant T --gpu UUID --start TIME [--end TIME] [--plan P] [--lease-id ID]
  leases end LEASE_ID --at TIME
  leases list [--tenant T] [--gpu UUID] [--active-at TIME] [--json]
  leases import FILE [--format csv|jsonl]
  leases preempt [LEASE_ID ...] [--gpu UUID] [--offer ID] [--at TIME]
  leases publish

TIME is ISO 8601 (no offset means UTC) or integer ms since the epoch. Every command that
changes leases commits, then publishes the outbox to `gpu.leases` (KAFKA_BOOTSTRAP_SERVERS,
default 127.0.0.1:9092); `--no-publish` leaves that to a later `leases publish`. Errors are
one line on stderr and exit status 2.

Test hook: with WATTMETER_FAULT=after-lease-commit in the environment, a changing command
kills its own process with SIGKILL right after the commit and before publishing, as a crash
there would; the crash test uses it to show that the next publish catches up. Never set it
in production.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from billing.cli_runner import run_command
from billing.common.errors import BillingError
from billing.leases.errors import PublishFailed
from billing.leases.importers import FORMATS, parse_time, read_lease_file
from billing.leases.outbox import bootstrap_servers, lease_horizon_ms, publish_pending
from billing.leases.service import end_lease, format_ms, import_leases, list_leases, open_lease
from billing.ledger import models
from billing.ledger.db import Ledger
from billing.ledger.db import now_ms as wall_ms
from schemas.leases import PLANS, Lease
from schemas.units import MS_PER_DAY

PROG = "wattmeter-billing leases"
FAULT_ENV = "WATTMETER_FAULT"
FAULT_AFTER_COMMIT = "after-lease-commit"


class _UsageError(BillingError):
    """A bad argument value, reported as one line."""


def add_lease_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register `leases open|end|list|import|publish` on an argparse subparsers object; the
    parser's `handler` default is `run_lease_command`, and `--db`/`--actor` use the dests
    `db` and `actor`, as the other `wattmeter-billing` commands do."""
    leases: argparse.ArgumentParser = subparsers.add_parser(
        "leases",
        help="open, end, list and import leases; publish them to gpu.leases",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    leases.add_argument("--db", help="billing database URL (default $WATTMETER_BILLING_DB, else a SQLite file)")
    leases.add_argument("--actor", help="who to name in the audit log (default $WATTMETER_ACTOR)")
    leases.set_defaults(handler=run_lease_command)  # the `args.handler(args, ledger)` convention of billing.cli
    sub = leases.add_subparsers(dest="lease_command", required=True)

    def no_publish(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--no-publish", action="store_true", help="commit only; a later `leases publish` sends it")

    opened = sub.add_parser("open", help="open a lease (or record one with its end)")
    opened.add_argument("--tenant", required=True)
    opened.add_argument("--gpu", required=True, help="GPU or MIG instance uuid")
    opened.add_argument("--start", required=True, help="ISO 8601 (no offset: UTC) or epoch ms")
    opened.add_argument("--end", help="ISO 8601 or epoch ms (default: open-ended)")
    opened.add_argument("--plan", default="on_demand", help=f"one of {', '.join(PLANS)} (default on_demand)")
    opened.add_argument("--lease-id", help="default: a hash of tenant, GPU and start (a retry opens nothing twice)")
    no_publish(opened)

    ended = sub.add_parser("end", help="end an open lease")
    ended.add_argument("lease_id")
    ended.add_argument("--at", required=True, help="ISO 8601 or epoch ms")
    no_publish(ended)

    listed = sub.add_parser("list", help="list leases")
    listed.add_argument("--tenant")
    listed.add_argument("--gpu")
    listed.add_argument("--active-at", help="only leases covering this instant")
    listed.add_argument("--json", action="store_true", help="print JSON (times in epoch ms)")

    imported = sub.add_parser("import", help="import a CSV or JSON-lines lease file, all or nothing")
    imported.add_argument("file", type=Path)
    imported.add_argument("--format", choices=FORMATS, help="default: from the file's extension")
    no_publish(imported)

    preempted = sub.add_parser("preempt", help="the owner takes GPUs back: end leases after notice, notify tenants")
    preempted.add_argument("lease_ids", nargs="*", help="leases to preempt")
    preempted.add_argument("--gpu", help="preempt the live lease on this GPU")
    preempted.add_argument("--offer", help="preempt every live lease sold in this offer")
    preempted.add_argument("--at", help="when the leases end (default: the notice + the offer's notice period)")
    preempted.add_argument("--noticed-at", help="when the notice was given (default: now); recording a past preemption")
    no_publish(preempted)

    sub.add_parser("publish", help="send the timelines of GPUs with pending outbox rows to gpu.leases")
    return leases


def _time(option: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise _UsageError(f"{option}: {exc}") from None


def _describe(lease: Lease) -> str:
    return (
        f"lease {lease.lease_id}: tenant {lease.tenant_id}, GPU {lease.gpu_uuid}, "
        f"[{format_ms(lease.start_ms)}, {format_ms(lease.end_ms)}), {lease.plan}"
    )


def _fault_after_commit() -> None:
    """The test hook (see the module docstring): die as a crash between commit and publish would."""
    if os.environ.get(FAULT_ENV) == FAULT_AFTER_COMMIT:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _publish(ledger: Ledger, horizon_ms: int, behind: int = 0) -> None:
    sent = publish_pending(ledger, bootstrap_servers(), horizon_ms)
    print(f"published {sent} lease timeline(s) to gpu.leases")
    if behind:
        print(
            f"{PROG}: note: {behind} lease(s) ended more than {horizon_ms / MS_PER_DAY:g} days ago, before the lease "
            "horizon: the timelines sent to the workers leave them out, and the time the workers metered as idle "
            'on their GPUs bills to them from the ledger (docs/billing.md, "Late leases")',
            file=sys.stderr,
        )


def _behind_horizon(session: Any, lease_ids: Sequence[str], horizon_ms: int) -> int:
    """How many of the leases ended before now - horizon: no worker will be told of them."""
    cutoff = wall_ms() - horizon_ms
    behind = 0
    for start in range(0, len(lease_ids), 500):
        query = select(func.count()).where(
            models.Lease.lease_id.in_(lease_ids[start : start + 500]), models.Lease.end_ms <= cutoff
        )
        behind += int(session.scalar(query) or 0)
    return behind


def _run(args: argparse.Namespace, ledger: Ledger) -> int:
    command = args.lease_command
    actor = args.actor
    if command == "list":
        active_at = _time("--active-at", args.active_at)
        with ledger.transaction() as session:
            leases = list_leases(session, args.tenant, args.gpu, active_at)
        if args.json:
            print(json.dumps([asdict(lease) for lease in leases], indent=2))
        else:
            for lease in leases:
                print(_describe(lease))
            if not leases:
                print("no leases")
        return 0
    horizon_ms = lease_horizon_ms()  # refuse a bad horizon before anything is committed
    behind = 0
    if command == "publish":
        _publish(ledger, horizon_ms)
        return 0
    if command == "open":
        start, end = _time("--start", args.start), _time("--end", args.end)
        assert start is not None
        with ledger.transaction() as session:
            lease = open_lease(session, args.tenant, args.gpu, start, end, args.plan, args.lease_id, actor)
            behind = _behind_horizon(session, [lease.lease_id], horizon_ms)
        _fault_after_commit()
        print(_describe(lease))
    elif command == "end":
        at = _time("--at", args.at)
        assert at is not None
        with ledger.transaction() as session:
            lease = end_lease(session, args.lease_id, at, actor)
            behind = _behind_horizon(session, [lease.lease_id], horizon_ms)
        _fault_after_commit()
        print(_describe(lease))
    elif command == "preempt":
        from billing.market.cli import deliver_once
        from billing.market.preemption import preempt

        with ledger.transaction() as session:
            done = preempt(
                session,
                lease_ids=tuple(args.lease_ids),
                gpu=args.gpu,
                offer_id=args.offer,
                at_ms=_time("--at", args.at),
                noticed_ms=_time("--noticed-at", args.noticed_at),
                actor=actor,
            )
        _fault_after_commit()
        for p in done:
            print(
                f"lease {p.lease_id} ({p.tenant_id}, GPU {p.gpu_uuid}) preempted: ends {format_ms(p.ends_ms)}, "
                f"notice {p.notice_ms // 1000} s (promised {p.promised_notice_ms // 1000} s), event {p.event_id}"
            )
        if not done:
            print("nothing to preempt")
        if not args.no_publish and done:
            _publish(ledger, horizon_ms)
            sent, delivered, failed = deliver_once(ledger)
            print(f"notice: {sent} event(s) on gpu.lease.events, {delivered} webhook(s) delivered, {failed} to retry")
        return 0
    elif command == "import":
        rows = read_lease_file(args.file, args.format)
        with ledger.transaction() as session:
            result = import_leases(session, rows, actor)
            behind = _behind_horizon(session, result.created, horizon_ms)
        _fault_after_commit()
        print(
            f"imported {len(result.created)} lease(s) from {args.file} on {len(result.gpus)} GPU(s); "
            f"{result.unchanged} row(s) were already held"
        )
    else:  # pragma: no cover - argparse allows only the commands above
        raise _UsageError(f"unknown command {command!r}")
    if not args.no_publish:
        try:
            _publish(ledger, horizon_ms, behind)
        except PublishFailed as exc:
            raise PublishFailed(f"committed, but not on gpu.leases yet: {exc}; run `leases publish` again") from None
    return 0


def run_lease_command(args: argparse.Namespace, ledger: Ledger | None = None) -> int:
    """Run a parsed `leases ...` command; `ledger` None opens the one named by --db or
    $WATTMETER_BILLING_DB. Returns the exit status (2 with one line on stderr on an error)."""
    return run_command(PROG, args.db, lambda opened: _run(args, opened), ledger)


def main(argv: list[str] | None = None) -> int:
    """`python -m billing.leases.cli leases ...`: the same commands without the rest of billing."""
    parser = argparse.ArgumentParser(prog="python -m billing.leases.cli")
    add_lease_commands(parser.add_subparsers(dest="command", required=True))
    return run_lease_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
