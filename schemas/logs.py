"""Service logging, shared by every long-running process (the agent, the worker and the sink):
standard library only, so the agent imports it without the stream processors' dependencies.

- `setup_logging(service)` (the worker and the sink): one line per record on stderr, plain
  text (the default) or JSON lines for log shippers (`WATTMETER_LOG_FORMAT=json`), never a
  terminal control code (they are written as ``\\xNN``); the Kafka clients' connection noise
  (aiokafka, kafka-python, faust, mode) is kept out by a filter that lets their real errors
  through; Python warnings, uncaught exceptions and "Exception ignored in ..." go through the
  same handler.
- `setup_plain_logging()` (the agent): the standard library's basic configuration in the same
  text format, kafka-python at WARNING (the agent's sender quiets kafka-python itself).

The format of these lines is a contract with whoever reads the logs (the JSON fields, the
variables' names), which is why it lives beside the other contracts. The broker watch that
the noise filter reports to is the stream processors' own (streams/broker_watch.py); here it
is only a `NoiseListener`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Protocol, TextIO

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


class NoiseListener(Protocol):
    """What the noise filter tells and asks (streams.broker_watch.BrokerWatch is one)."""

    def away_within(self, seconds: float) -> bool:
        """True while the broker is away, and for `seconds` after it came back."""
        ...

    def noise(self) -> None:
        """A client record about the broker was dropped."""
        ...


def _exception_names(exc: BaseException | None) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__} if exc is not None else set()


class KafkaNoiseFilter(logging.Filter):
    """Drops the Kafka clients' records about a broker they cannot reach (one per connection
    attempt, thousands an outage) and the "Timer ... overlapping" warnings an outage causes;
    anything else from them, and everything from other loggers, goes through. The dropped
    records are counted and nudge the `watch`, which says once what is going on."""

    def __init__(self) -> None:
        super().__init__()
        self.watch: NoiseListener | None = None
        self.suppressed = 0
        self.last_suppressed = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.partition(".")[0] not in CLIENT_LOGGERS or record.levelno >= logging.CRITICAL:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is not ours to fix here
            return True
        overlap = OVERLAP.search(text)
        if overlap:  # a timer whose run waited on the broker
            return not self._away_within(float(overlap["runtime"]) + SETTLE_S)
        if not self._is_noise(record, text):
            return True
        self.suppressed += 1
        self.last_suppressed = text
        if self.watch is not None:
            self.watch.noise()
        return False

    def _away_within(self, seconds: float) -> bool:
        return self.watch is not None and self.watch.away_within(seconds)

    def _is_noise(self, record: logging.LogRecord, text: str) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return bool(_exception_names(exc) & CONNECTION_ERRORS)
        if NOISE.search(text):
            return True
        # while the broker is away (and just after) the clients' warnings are about it
        return record.levelno <= logging.ERROR and self._away_within(SETTLE_S)


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
    _replace_root_handlers(handler, level)
    _set_client_levels(level)
    logging.captureWarnings(True)
    _install_hooks()
    return noise


def setup_plain_logging(level: int = logging.INFO) -> None:
    """The agent's logging: `logging.basicConfig` in the text format (so nothing changes where
    the root logger has a handler already), kafka-python's loggers at WARNING."""
    logging.basicConfig(level=level, format=TEXT_FORMAT)
    logging.getLogger("kafka").setLevel(logging.WARNING)


def _replace_root_handlers(handler: logging.Handler, level: int) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _set_client_levels(level: int) -> None:
    """The Kafka client loggers at WARNING (the quiet ones at their floor), unless DEBUG is asked for."""
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    for name, floor in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else max(level, floor))


# --------------------------------------------------------------------------- the hooks

_installed: dict[str, Any] = {}  # the hooks in place before ours
_hook_log = logging.getLogger("wattmeter")


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        _installed["excepthook"](kind, exc, tb)
        return
    _hook_log.critical("uncaught exception", exc_info=(kind, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    _hook_log.error("uncaught exception in thread %s", name, exc_info=exc_info)  # type: ignore[arg-type]


def _unraisablehook(unraisable: Any) -> None:  # sys.UnraisableHookArgs
    where = unraisable.err_msg or "Exception ignored in"
    _hook_log.warning("%s %r: %r", where, unraisable.object, unraisable.exc_value)


def _install_hooks() -> None:
    """Uncaught exceptions (main thread and others) and "Exception ignored in ..." through
    logging, so that JSON mode stays one object per line."""
    if _installed:
        return
    _installed.update(excepthook=sys.excepthook, threading=threading.excepthook, unraisable=sys.unraisablehook)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook
