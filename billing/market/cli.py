"""Wiring: the valley market's commands of `wattmeter-billing`.

  offers open ID (--gpus A,B | --pool P) --start TIME --end TIME [--plans valley,interruptible] --notice-s N
  offers close ID
  offers list [--status open|closed]
  offers pool P UUID...                      label GPUs with a pool
  maintenance announce --gpus A,B --start TIME --end TIME [--note TEXT]
  maintenance list [--from TIME --to TIME]
  webhooks set --tenant T --url URL [--secret S]
  webhooks list [--tenant T] [--state pending|delivered|failed]
  webhooks deliver [--follow]                send due deliveries (and events to gpu.lease.events)
  webhooks retry [EVENT_ID]                  re-queue failed deliveries

`leases preempt` is in `billing.leases.cli`. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from typing import Any

from billing.common.instants import ms_to_iso
from billing.leases import offers
from billing.leases.errors import InvalidOffer, PublishFailed
from billing.leases.importers import parse_time
from billing.leases.outbox import BOOTSTRAP_TIMEOUT_S, bootstrap_servers
from billing.ledger.db import Ledger
from billing.market import maintenance, webhooks
from billing.market.notices import publish_events


def _time(option: str, value: str) -> int:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise InvalidOffer(f"{option}: {exc}") from None


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def add_market_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Register `offers`, `maintenance` and `webhooks` (handler: `args.handler(args, ledger)`)."""
    offer = subparsers.add_parser("offers", help="capacity offers: what the owner rents out")
    osub = offer.add_subparsers(dest="offer_command", required=True)
    opened = osub.add_parser("open", parents=[common], help="offer GPUs for rent over a window")
    opened.add_argument("offer_id")
    opened.add_argument("--gpus", help="comma-separated GPU uuids")
    opened.add_argument("--pool", help="a pool label (see `offers pool`)")
    opened.add_argument("--start", required=True, help="ISO 8601 (no offset: UTC) or epoch ms")
    opened.add_argument("--end", required=True)
    opened.add_argument("--plans", default=",".join(offers.OFFER_PLANS), help="plans it may be sold on")
    opened.add_argument("--notice-s", type=int, required=True, help="seconds of notice before a preemption")
    closed = osub.add_parser("close", parents=[common], help="stop selling in an offer (its leases run on)")
    closed.add_argument("offer_id")
    listed = osub.add_parser("list", parents=[common], help="list offers")
    listed.add_argument("--status", choices=[offers.OPEN, offers.CLOSED])
    pool = osub.add_parser("pool", parents=[common], help="label GPUs with a pool")
    pool.add_argument("pool")
    pool.add_argument("gpus", nargs="+")
    offer.set_defaults(handler=_offers)

    maint = subparsers.add_parser("maintenance", help="announce maintenance (excluded from SLAs)")
    msub = maint.add_subparsers(dest="maintenance_command", required=True)
    ann = msub.add_parser("announce", parents=[common], help="announce a maintenance window ahead")
    ann.add_argument("--gpus", required=True)
    ann.add_argument("--start", required=True)
    ann.add_argument("--end", required=True)
    ann.add_argument("--note", default="")
    mlist = msub.add_parser("list", parents=[common], help="list maintenance windows")
    mlist.add_argument("--from", dest="from_", default="1970-01-01")
    mlist.add_argument("--to", default="9999-01-01")
    maint.set_defaults(handler=_maintenance)

    hooks = subparsers.add_parser("webhooks", help="tenants' webhook endpoints and deliveries")
    hsub = hooks.add_subparsers(dest="webhook_command", required=True)
    hset = hsub.add_parser("set", parents=[common], help="set a tenant's endpoint (prints its signing secret)")
    hset.add_argument("--tenant", required=True)
    hset.add_argument("--url", required=True)
    hset.add_argument("--secret", help="default: a new random secret")
    hlist = hsub.add_parser("list", parents=[common], help="deliveries and where each stands")
    hlist.add_argument("--tenant")
    hlist.add_argument("--state", choices=[webhooks.PENDING, webhooks.DELIVERED, webhooks.FAILED])
    deliver = hsub.add_parser("deliver", parents=[common], help="send due deliveries and events to gpu.lease.events")
    deliver.add_argument("--follow", action="store_true", help="keep delivering (a service), once a second")
    deliver.add_argument("--no-kafka", action="store_true", help="webhooks only")
    retry = hsub.add_parser("retry", parents=[common], help="re-queue failed deliveries")
    retry.add_argument("event_id", nargs="?")
    hooks.set_defaults(handler=_webhooks)


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], lines: list[str], empty: str) -> None:
    import json

    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        print("\n".join(lines) if lines else empty)


def _offers(args: argparse.Namespace, ledger: Ledger) -> int:
    with ledger.transaction() as session:
        command = args.offer_command
        if command == "pool":
            added = offers.add_pool_members(session, args.pool, args.gpus)
            print(f"pool {args.pool}: {added} GPU(s) added, {len(offers.pool_members(session, args.pool))} in all")
            return 0
        if command == "open":
            found = [
                offers.open_offer(
                    session,
                    args.offer_id,
                    start_ms=_time("--start", args.start),
                    end_ms=_time("--end", args.end),
                    notice_ms=args.notice_s * 1000,
                    gpus=_csv(args.gpus),
                    pool=args.pool,
                    plans=_csv(args.plans),
                    actor=args.actor,
                )
            ]
        elif command == "close":
            found = [offers.close_offer(session, args.offer_id, args.actor)]
        else:
            found = offers.list_offers(session, args.status)
    _emit(args, [asdict(o) for o in found], [o.describe() for o in found], "no offers")
    return 0


def _maintenance(args: argparse.Namespace, ledger: Ledger) -> int:
    with ledger.transaction() as session:
        if args.maintenance_command == "announce":
            found = [
                maintenance.announce(
                    session,
                    _csv(args.gpus),
                    _time("--start", args.start),
                    _time("--end", args.end),
                    args.note,
                    args.actor,
                )
            ]
        else:
            found = maintenance.windows_overlapping(session, _time("--from", args.from_), _time("--to", args.to))
    lines = [f"{ms_to_iso(w.start_ms)}..{ms_to_iso(w.end_ms)} {', '.join(w.gpus)} {w.note}".rstrip() for w in found]
    _emit(args, [asdict(w) for w in found], lines, "no maintenance windows")
    return 0


FOLLOW_BOOTSTRAP_TIMEOUT_S = 5.0  # `deliver --follow`: a broker away holds up the webhooks this long at most
KAFKA_RETRY_S = 30.0  # `deliver --follow`: how often a broker that was away is tried again


def deliver_once(ledger: Ledger, kafka: bool = True, bootstrap_timeout_s: float | None = None) -> tuple[int, int, int]:
    """Send pending events to gpu.lease.events (unless `kafka` is False), then due webhooks:
    (events sent, webhooks delivered, failed attempts)."""
    timeout = BOOTSTRAP_TIMEOUT_S if bootstrap_timeout_s is None else bootstrap_timeout_s
    sent = publish_events(ledger, bootstrap_servers(), bootstrap_timeout_s=timeout) if kafka else 0
    delivered, failed = webhooks.deliver_due(ledger)
    return sent, delivered, failed


def _webhooks(args: argparse.Namespace, ledger: Ledger) -> int:
    command = args.webhook_command
    if command == "deliver":
        kafka_down, kafka_next = False, 0.0
        while True:
            use_kafka = not args.no_kafka and time.monotonic() >= kafka_next
            try:
                sent, delivered, failed = deliver_once(
                    ledger, use_kafka, FOLLOW_BOOTSTRAP_TIMEOUT_S if args.follow else None
                )
                if use_kafka and kafka_down:
                    print("gpu.lease.events: the broker is back", flush=True)
                    kafka_down = False
            except PublishFailed as exc:
                if not args.follow:
                    raise
                if not kafka_down:  # once per outage: the events wait in the ledger, webhooks go on
                    print(f"gpu.lease.events: {exc}; the events wait and are sent when it is back", flush=True)
                kafka_down, kafka_next = True, time.monotonic() + KAFKA_RETRY_S
                sent, (delivered, failed) = 0, webhooks.deliver_due(ledger)
            if sent or delivered or failed or not args.follow:
                print(
                    f"{sent} event(s) to gpu.lease.events, {delivered} webhook(s) delivered, {failed} failed",
                    flush=True,
                )
            if not args.follow:
                return 0
            time.sleep(1)
    with ledger.transaction() as session:
        if command == "set":
            secret = webhooks.set_endpoint(session, args.tenant, args.url, args.secret, args.actor)
            print(f"tenant {args.tenant}: webhooks go to {args.url}, signed with {secret}")
            return 0
        if command == "retry":
            print(f"{webhooks.retry_failed(session, args.event_id, args.actor)} delivery(ies) re-queued")
            return 0
        rows = webhooks.list_deliveries(session, args.tenant, args.state)
    lines = [
        f"{d.event_id} {d.tenant_id:<12} {d.state:<9} attempts {d.attempts}"
        + (f", last: {d.last_error}" if d.last_error else "")
        + (f", delivered {ms_to_iso(d.delivered_ms)}" if d.delivered_ms else "")
        for d in rows
    ]
    _emit(args, [asdict(d) for d in rows], lines, "no deliveries")
    return 0
