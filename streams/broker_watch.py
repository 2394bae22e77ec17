"""The Kafka broker's reachability, as the stream processors log it: standard library only.

`BrokerWatch`: one line when the Kafka broker is lost, at most one a minute while it stays
away, one when it is back, from a probe of the bootstrap addresses (a TCP connect) that the
code catching client failures can also `nudge`, and that the log's noise filter
(schemas.logs.KafkaNoiseFilter) tells about the client records it drops.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable

from schemas.logs import KafkaNoiseFilter
from schemas.units import NS_PER_MS, S_PER_HOUR, S_PER_MINUTE

DEFAULT_KAFKA_PORT = 9092
_ADDRESS = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?")


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` (a ``scheme://`` prefix and ``[v6]:port`` allowed; the port
    defaults to 9092) as (host, port) pairs; ValueError naming the bad item otherwise."""
    pairs = []
    for item in (bootstrap or "").split(","):
        text = item.strip()
        if "://" in text:
            text = text.split("://", 1)[1]
        match = _ADDRESS.fullmatch(text)
        port = int(match["port"]) if match and match["port"] else DEFAULT_KAFKA_PORT
        if not match or not 0 < port < 65536 or (match["host"] and match["host"].strip(".-") == ""):
            raise ValueError(
                f"bad Kafka bootstrap address {item.strip()!r} in {bootstrap!r}: expected host:port[,host:port...]"
            )
        pairs.append((match["v6"] or match["host"], port))
    return pairs


def tcp_probe(addresses: list[tuple[str, int]], timeout_s: float = 3.0) -> str | None:
    """None when one of `addresses` accepts a TCP connection, else why not (the last reason)."""
    reason = "no address"
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return None
        except OSError as exc:
            reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    return reason


def duration(seconds: float) -> str:
    """3s, 2m31s, 1h02m."""
    whole = int(seconds)
    if whole < S_PER_MINUTE:
        return f"{whole}s"
    if whole < S_PER_HOUR:
        return f"{whole // S_PER_MINUTE}m{whole % S_PER_MINUTE:02d}s"
    return f"{whole // S_PER_HOUR}h{whole % S_PER_HOUR // S_PER_MINUTE:02d}m"


class BrokerWatch:
    """Tells the log when the broker is lost, still away and back; nothing in between.

    A thread probes the bootstrap addresses (TCP connect): every `quiet_probe_s` while all
    is well, at once when `nudge()`d (a client call failed) or when the noise filter drops
    a record, every `probe_s` while the broker is away. Two failed probes in a row make an
    outage: one WARNING then, one WARNING each `remind_s` while it lasts, one INFO when a
    probe succeeds again. `away`, `away_within()` and `back_wall_ms` tell the service.
    """

    def __init__(
        self,
        bootstrap: str,
        who: str = "the service",
        *,
        noise: KafkaNoiseFilter | None = None,
        probe_s: float = 1.0,
        quiet_probe_s: float = 5.0,
        remind_s: float = 60.0,
        confirm: int = 2,
        probe: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.who = who
        addresses = parse_bootstrap(bootstrap)
        self._probe = probe or (lambda: tcp_probe(addresses))
        self.probe_s = probe_s
        self.quiet_probe_s = quiet_probe_s
        self.remind_s = remind_s
        self.confirm = confirm
        self.clock = clock
        self.log = logger or logging.getLogger("wattmeter.broker")
        self.noise_filter = noise
        if noise is not None:
            noise.watch = self
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._first_failure: float | None = None
        self._lost_at: float | None = None
        self._back_at: float | None = None
        self._next_reminder = 0.0
        self._reason = ""
        self._suppressed_at_loss = 0
        self.back_wall_ms: int | None = None  # wall clock of the last return, for processing-time timeouts
        self.outages = 0

    # -- what the service asks
    @property
    def away(self) -> bool:
        return self._lost_at is not None

    def away_within(self, seconds: float) -> bool:
        """True while the broker is away, and for `seconds` after it came back."""
        if self._lost_at is not None or self._first_failure is not None:
            return True
        return self._back_at is not None and self.clock() - self._back_at <= seconds

    def nudge(self) -> None:
        """Something failed to reach the broker: probe now rather than at the next turn."""
        self._wake.set()

    def noise(self) -> None:
        self._wake.set()

    def wait_until_up(self, stop: threading.Event | None = None) -> bool:
        """Block until a probe reaches the broker (logging the outage as it goes); False if
        `stop` was set first."""
        while not (stop is not None and stop.is_set()):
            if self.check():
                return True
            (stop or self._stop).wait(self.probe_s)
        return False

    # -- the probe loop
    def start(self) -> BrokerWatch:
        self._thread = threading.Thread(target=self._run, name="broker-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            doubtful = self._lost_at is not None or self._first_failure is not None
            self._wake.wait(self.probe_s if doubtful else self.quiet_probe_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            pause = self.probe_s - (self.clock() - last)
            if pause > 0 and self._stop.wait(pause):  # at most one probe per probe_s
                return
            last = self.clock()
            self.check()

    def check(self) -> bool:
        """Probe once and log a change; True when the broker answered."""
        reason = self._probe()
        now = self.clock()
        with self._lock:
            if reason is None:
                self._answered(now)
                return True
            self._failed(now, reason)
            return False

    # -- the changes it logs (called under the lock)
    def _answered(self, now: float) -> None:
        self._failures = 0
        self._first_failure = None
        if self._lost_at is None:
            return
        away = now - self._lost_at
        self._lost_at = None
        self._back_at = now
        self.back_wall_ms = time.time_ns() // NS_PER_MS
        dropped = self._suppressed() - self._suppressed_at_loss
        self.log.info(
            "Kafka broker at %s is back after %s; %s carries on (%d client connection messages left out)",
            self.bootstrap,
            duration(away),
            self.who,
            dropped,
            extra={"event": "broker_back", "away_s": round(away, 1)},
        )

    def _failed(self, now: float, reason: str) -> None:
        self._failures += 1
        self._reason = reason
        if self._first_failure is None:
            self._first_failure = now
        if self._lost_at is None and self._failures >= self.confirm:
            self._lost(self._first_failure, reason)
        elif self._lost_at is not None and now >= self._next_reminder:
            self._remind(now, self._lost_at, reason)

    def _lost(self, since: float, reason: str) -> None:
        self._lost_at = since
        self._next_reminder = since + self.remind_s
        self._suppressed_at_loss = self._suppressed()
        self.outages += 1
        self.log.warning(
            "Kafka broker at %s lost (%s); %s waits for it and carries on where it stopped",
            self.bootstrap,
            reason,
            self.who,
            extra={"event": "broker_lost"},
        )

    def _remind(self, now: float, lost_at: float, reason: str) -> None:
        while self._next_reminder <= now:
            self._next_reminder += self.remind_s
        self.log.warning(
            "Kafka broker at %s still away after %s (%s); %s is waiting",
            self.bootstrap,
            duration(now - lost_at),
            reason,
            self.who,
            extra={"event": "broker_away", "away_s": round(now - lost_at, 1)},
        )

    def _suppressed(self) -> int:
        return self.noise_filter.suppressed if self.noise_filter is not None else 0
