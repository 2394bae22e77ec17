"""Service logging, shared by the long-running processes (the worker and the sink; the agent
can call the same two things): standard library only.

- `setup_logging(service)`: one line per record on stderr, plain text (the default) or JSON
  lines for log shippers (`WATTMETER_LOG_FORMAT=json`), never a terminal control code (they
  are written as ``\\xNN``); the Kafka clients' connection noise (aiokafka, kafka-python,
  faust, mode) is kept out by a filter that lets their real errors through; Python warnings,
  uncaught exceptions and "Exception ignored in ..." go through the same handler.
- `BrokerWatch`: one line when the Kafka broker is lost, at most one a minute while it stays
  away, one when it is back, from a probe of the bootstrap addresses (a TCP connect) that the
  code catching client failures can also `nudge`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, TextIO

LOG_FORMAT_ENV = "WATTMETER_LOG_FORMAT"
LOG_LEVEL_ENV = "WATTMETER_LOG_LEVEL"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Every C0 control character but tab and newline, and DEL: terminal escape sequences
# (the console spinner's "\x1b[?25l"), backspaces, carriage returns.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Loggers of the Kafka client stack whose connection noise is filtered.
CLIENT_LOGGERS = ("aiokafka", "kafka", "faust", "mode")
# kafka-python's own IO-thread timing diagnostic ("Task ... ran for 0.284s ... blocking the
# event loop") fires whenever the host is busy; it is about the client, not the service.
QUIET_LOGGERS = {"kafka.net.selector": logging.ERROR}
# What those clients say about a broker they cannot reach, once per connection attempt.
NOISE = re.compile(
    "|".join(
        (
            r"Unable connect to node",
            r"Unable to update metadata",
            r"Unable to request metadata",
            r"Connect call failed",
            r"ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT",
            r"Connection refused|Connection reset",
            r"KafkaConnectionError",
            r"NodeNotReadyError",
            r"NoBrokersAvailable",
            r"RequestTimedOutError",
            r"KafkaTimeoutError",
            r"Connection lost",
            r"Connection at \S+ closed",
            r"socket disconnected",
            r"No node available",
            r"not ready; waiting",
            r"Bootstrap (connection|attempt|failed)",
            r"Metadata refresh",
            r"[Cc]oordinator (dead|unknown|not available|load in progress)",
            r"CoordinatorNotAvailable|NotCoordinator|GroupCoordinatorNotAvailable",
            r"Heartbeat (failed|session expired|send request failed)",
            r"Error sending \w+Request",
            r"Group Coordinator Request failed",
            r"Failed fetch messages",
            r"Marking the coordinator dead",
            r"LeaderNotAvailable|NotLeaderForPartition|NotLeaderOrFollower",
            r"OffsetCommit failed",
        )
    )
)
OVERLAP = re.compile(r"Timer .* is overlapping \(interval=.* runtime=(?P<runtime>[0-9.]+)\)")
# Exception classes that mean "the broker cannot be reached", by name (no Kafka import here).
CONNECTION_ERRORS = {
    "ConnectionError",
    "TimeoutError",
    "KafkaConnectionError",
    "NodeNotReadyError",
    "NoBrokersAvailable",
    "KafkaTimeoutError",
    "RequestTimedOutError",
    "RequestTimedOut",
    "CoordinatorNotAvailableError",
    "NotCoordinatorError",
    "GroupCoordinatorNotAvailableError",
    "LeaderNotAvailableError",
    "NotLeaderForPartitionError",
}
# After the broker is back, the clients' leftover noise (reconnects, a rebalance) is
# still counted as the outage's for this long.
SETTLE_S = 30.0


def clean(text: str) -> str:
    """`text` with every control character but tab and newline written as ``\\xNN``."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, control characters escaped (tracebacks keep their lines)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return clean(super().format(record))


_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601, ms), level, logger, service, message,
    exc (the traceback, when there is one) and any `extra=` fields. ASCII only, so control
    characters are escaped by JSON itself."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value
        return json.dumps(entry, ensure_ascii=True, default=str)


def _exception_names(exc: BaseException | None) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__} if exc is not None else set()


class KafkaNoiseFilter(logging.Filter):
    """Drops the Kafka clients' records about a broker they cannot reach (one per connection
    attempt, thousands an outage) and the "Timer ... overlapping" warnings an outage causes;
    anything else from them, and everything from other loggers, goes through. The dropped
    records are counted and nudge the `watch`, which says once what is going on."""

    def __init__(self) -> None:
        super().__init__()
        self.watch: BrokerWatch | None = None
        self.suppressed = 0
        self.last_suppressed = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.partition(".")[0] not in CLIENT_LOGGERS or record.levelno >= logging.CRITICAL:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is not ours to fix here
            return True
        watch = self.watch
        overlap = OVERLAP.search(text)
        if overlap:  # a timer whose run waited on the broker
            return not (watch is not None and watch.away_within(float(overlap["runtime"]) + SETTLE_S))
        exc = record.exc_info[1] if record.exc_info else None
        noisy = bool(NOISE.search(text)) if exc is None else bool(_exception_names(exc) & CONNECTION_ERRORS)
        if not noisy and exc is None and record.levelno <= logging.ERROR and watch is not None:
            # while the broker is away (and just after) the clients' warnings are about it
            noisy = watch.away_within(SETTLE_S)
        if not noisy:
            return True
        self.suppressed += 1
        self.last_suppressed = text
        if watch is not None:
            watch.noise()
        return False


_installed: dict[str, Any] = {}


def log_options(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """(format, level) from $WATTMETER_LOG_FORMAT (text | json; default text) and
    $WATTMETER_LOG_LEVEL (default INFO); ValueError naming the variable otherwise."""
    env = os.environ if environ is None else environ
    fmt = (env.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV} must be one of {', '.join(FORMATS)}, not {fmt!r}")
    name = (env.get(LOG_LEVEL_ENV) or "INFO").strip().upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ValueError(f"{LOG_LEVEL_ENV} must be DEBUG, INFO, WARNING or ERROR, not {name!r}")
    return fmt, level


def setup_logging(
    service: str, *, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> KafkaNoiseFilter:
    """Send every record to `stream` (stderr) through one handler, in the format and from
    the level of `log_options`; the Kafka client loggers at WARNING unless DEBUG is asked
    for. Returns the noise filter, for a `BrokerWatch`. ValueError for an unknown format or
    level."""
    fmt, level = log_options(environ)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter())
    noise = KafkaNoiseFilter()
    handler.addFilter(noise)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    for name, floor in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else max(level, floor))
    logging.captureWarnings(True)
    _install_hooks()
    return noise


def _install_hooks() -> None:
    """Uncaught exceptions (main thread and others) and "Exception ignored in ..." through
    logging, so that JSON mode stays one object per line."""
    if _installed:
        return
    log = logging.getLogger("wattmeter")

    def excepthook(kind, exc, tb) -> None:
        if issubclass(kind, KeyboardInterrupt):
            _installed["excepthook"](kind, exc, tb)
            return
        log.critical("uncaught exception", exc_info=(kind, exc, tb))

    def thread_excepthook(args) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        log.error("uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    def unraisablehook(unraisable) -> None:
        where = unraisable.err_msg or "Exception ignored in"
        log.warning("%s %r: %r", where, unraisable.object, unraisable.exc_value)

    _installed.update(excepthook=sys.excepthook, threading=threading.excepthook, unraisable=sys.unraisablehook)
    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
    sys.unraisablehook = unraisablehook


# --------------------------------------------------------------------------- the broker


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` (a ``scheme://`` prefix and ``[v6]:port`` allowed; the port
    defaults to 9092) as (host, port) pairs; ValueError naming the bad item otherwise."""
    pairs = []
    for item in (bootstrap or "").split(","):
        text = item.strip()
        if "://" in text:
            text = text.split("://", 1)[1]
        match = re.fullmatch(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?", text)
        port = int(match["port"]) if match and match["port"] else 9092
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
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


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
                self._failures = 0
                self._first_failure = None
                if self._lost_at is not None:
                    away = now - self._lost_at
                    self._lost_at = None
                    self._back_at = now
                    self.back_wall_ms = time.time_ns() // 1_000_000
                    dropped = self._suppressed() - self._suppressed_at_loss
                    self.log.info(
                        "Kafka broker at %s is back after %s; %s carries on (%d client connection messages left out)",
                        self.bootstrap,
                        duration(away),
                        self.who,
                        dropped,
                        extra={"event": "broker_back", "away_s": round(away, 1)},
                    )
                return True
            self._failures += 1
            self._reason = reason
            if self._first_failure is None:
                self._first_failure = now
            if self._lost_at is None and self._failures >= self.confirm:
                self._lost_at = self._first_failure
                self._next_reminder = self._lost_at + self.remind_s
                self._suppressed_at_loss = self._suppressed()
                self.outages += 1
                self.log.warning(
                    "Kafka broker at %s lost (%s); %s waits for it and carries on where it stopped",
                    self.bootstrap,
                    reason,
                    self.who,
                    extra={"event": "broker_lost"},
                )
            elif self._lost_at is not None and now >= self._next_reminder:
                while self._next_reminder <= now:
                    self._next_reminder += self.remind_s
                self.log.warning(
                    "Kafka broker at %s still away after %s (%s); %s is waiting",
                    self.bootstrap,
                    duration(now - self._lost_at),
                    reason,
                    self.who,
                    extra={"event": "broker_away", "away_s": round(now - self._lost_at, 1)},
                )
            return False

    def _suppressed(self) -> int:
        return self.noise_filter.suppressed if self.noise_filter is not None else 0
