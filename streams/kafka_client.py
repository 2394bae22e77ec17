"""kafka-python's network client, closed on its own IO thread.

kafka-python 3.0 (3.0.0 to 3.0.12 at least) drives every socket of a ``KafkaConsumer`` or
``KafkaAdminClient`` from one IO thread (``kafka/net/selector.py``, ``NetworkSelector.start``)
and is not thread-safe otherwise, but ``KafkaConsumer.close()`` (``kafka/consumer/group.py:597``)
and ``KafkaAdminClient.close()`` call ``KafkaNetClient.close()`` (``kafka/net/compat.py:136``)
on the caller's thread while that IO thread still runs. ``KafkaConnectionManager.close()``
then closes each connection's transport from the caller's thread:
``KafkaTCPTransport._close()`` (``kafka/net/transport.py:264``) sets ``self._sock = None`` and
closes the socket. When a broker's response had just woken the transport's read task on the
IO thread (after ``await wait_read`` in ``_read_from_sock``, ``transport.py:92``, before
``self._sock.recv``, ``transport.py:110``), ``cancel()`` cannot stop it (the task is
RUNNING), and it reads from ``None``: ``AttributeError: 'NoneType' object has no attribute
'recv'``, logged at ERROR with a traceback as "<KafkaTCPTransport [none] (closed)>: Error
receiving network data closing socket" (or ``OSError: [Errno 9]`` when it came a moment
later). A consumer that polls a live broker always has a fetch in flight, so any close may
meet one; the Parquet sink's stop after a broker outage did (issue 15).

``IoThreadClient`` closes the connections on the IO thread instead, where they are driven, and
only then stops the loop: a read task can never see its socket vanish. It is passed through
the clients' own ``kafka_client`` setting (``kafka_consumer``), nothing of kafka-python is
patched. tests/streams/test_kafka_client.py reproduces the race deterministically on the real broker
and fails with the stock client.
"""

from __future__ import annotations

from typing import Any

from kafka.net.compat import KafkaNetClient


class IoThreadClient(KafkaNetClient):  # type: ignore[misc]
    def close(self, node_id: Any = None) -> None:
        try:
            # on the IO thread (or, when none runs, on this one, driving the loop itself)
            self._net.run(self._manager.close, node_id)
        except Exception:  # noqa: BLE001 - the loop is closed, crashed or is this thread: none drives the sockets
            self._manager.close(node_id=node_id)  # idempotent; raises again if closing itself failed
        if node_id is None:
            self._net.close()  # stops and joins the IO thread, then cancels what was left


def kafka_consumer(*topics: str, **config: Any) -> Any:
    """A ``kafka.KafkaConsumer`` whose ``close()`` closes its connections on its IO thread."""
    from kafka import KafkaConsumer

    return KafkaConsumer(*topics, kafka_client=IoThreadClient, **config)
