"""Adapter: aiokafka's failed metadata updates wait its retry_backoff_ms, as its other retries do.

Why. While a produce batch waits for a partition leader, aiokafka's sender asks the client for
metadata (``AIOKafkaClient.force_metadata_update``) and waits for the answer; the client's
synchronizer task (``AIOKafkaClient._md_synchronizer``) runs ``_metadata_update`` at once and,
when it fails, hands back False with no pause, and the sender asks again. With the broker down
every attempt fails at once, so the worker spun through thousands of connection attempts (and
log records) a second, at half a core, for the whole outage (found in the outage work, commit
bc6a344). aiokafka's other retry paths already sleep ``retry_backoff_ms``; this one then does too.

Why a patch. Checked against aiokafka 0.14.0 (faust-streaming 0.15.3, requirements.lock): there is
no public way in. ``retry_backoff_ms`` and ``metadata_max_age_ms`` do not reach this path, and
``AIOKafkaProducer`` builds its ``AIOKafkaClient`` itself (no client class to pass, and Faust's
producer settings pass nothing through to it). So the one private method is wrapped, here only,
on the class (every client of the process: the producer's and the consumer's), once. Where
aiokafka has no such method the call is a no-op; tests/streams/test_aiokafka_pacing.py fails
when an aiokafka upgrade stops calling it, so the patch is checked again then.
"""

from __future__ import annotations

import asyncio
from typing import Any

CHECKED_AGAINST = "aiokafka 0.14.0"
PATCHED = "_metadata_update"  # AIOKafkaClient's one metadata request, False when it failed
DEFAULT_BACKOFF_S = 0.1  # aiokafka's retry_backoff_ms default, where a client has none


def pace_failed_metadata_updates() -> None:
    """Wrap ``AIOKafkaClient._metadata_update`` so that a failed update (False) waits the client's
    retry_backoff_ms before it returns. Idempotent; a no-op where the method does not exist."""
    from aiokafka.client import AIOKafkaClient

    update = getattr(AIOKafkaClient, PATCHED, None)
    if update is None or getattr(update, "wattmeter_paced", False):
        return

    async def paced(self: Any, cluster_metadata: Any, topics: Any) -> Any:
        updated = await update(self, cluster_metadata, topics)
        if updated is False:
            await asyncio.sleep(getattr(self, "_retry_backoff", DEFAULT_BACKOFF_S))
        return updated

    paced.wattmeter_paced = True  # type: ignore[attr-defined]
    setattr(AIOKafkaClient, PATCHED, paced)
