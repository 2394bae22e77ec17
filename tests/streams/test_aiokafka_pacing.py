"""streams/aiokafka_pacing.py: the one private aiokafka method the worker wraps, and why it still
needs to be (the installed aiokafka's synchronizer calls it, with no pause after a failure)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient

from streams.aiokafka_pacing import PATCHED, pace_failed_metadata_updates

SYNCHRONIZER = "_md_synchronizer"  # AIOKafkaClient's task that runs the metadata updates


def test_the_installed_aiokafka_still_calls_the_wrapped_method_without_a_pause() -> None:
    """When this fails, aiokafka changed: check again whether the patch is needed (or possible)."""
    synchronizer = inspect.getsource(getattr(AIOKafkaClient, SYNCHRONIZER))
    assert f"await self.{PATCHED}(" in synchronizer
    assert "sleep" not in synchronizer  # still no backoff of its own after a failed update


def test_a_failed_update_waits_the_retry_backoff_and_a_good_one_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [False, True]

    async def update(self: Any, cluster_metadata: Any, topics: Any) -> bool:
        return answers.pop(0)

    monkeypatch.setattr(AIOKafkaClient, PATCHED, update)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    pace_failed_metadata_updates()
    pace_failed_metadata_updates()  # once only
    paced = getattr(AIOKafkaClient, PATCHED)
    assert paced is not update and paced.wattmeter_paced

    class Client:
        _retry_backoff = 0.25

    assert asyncio.run(paced(Client(), None, None)) is False
    assert asyncio.run(paced(Client(), None, None)) is True
    assert slept == [0.25]
