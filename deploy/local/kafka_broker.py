"""A single-node Apache Kafka broker (KRaft) for tests, demos and laptops, first that works
(``WATTMETER_KAFKA_MODE=external|testcontainers|jars`` forces one):

1. ``KAFKA_BOOTSTRAP_SERVERS``: that broker, used as it is (it must answer).
2. A Docker engine answers ``docker info`` and ``testcontainers`` is installed: a KRaft
   ``testcontainers.kafka.KafkaContainer``.
3. ``java`` 17+ (and ``mvn`` until the jars are cached): the Apache Kafka jars, fetched once
   from Maven Central (``kafka-pom.xml``) into ``$WATTMETER_CACHE_DIR/kafka-<version>/lib``,
   run on free loopback ports by ``deploy.local.process``; storage, config and log in the
   state directory.

Otherwise ``BrokerUnavailable`` says what is missing (the CLI exits 2). kafka-python's admin
client checks that a broker answers and creates the topics of ``schemas.topics``.

    python -m deploy.local.kafka_broker start|stop|status|run [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.local import process

KAFKA_VERSION = "4.1.0"
KAFKA_COORDINATES = f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}"
POM = Path(__file__).with_name("kafka-pom.xml")
DEFAULT_STATE_DIR = Path(".wattmeter/kafka")
MAVEN_TIMEOUT_S = float(os.environ.get("WATTMETER_MAVEN_TIMEOUT_S", "600"))
STOP_TIMEOUT_S = 15.0
MODES = ("external", "testcontainers", "jars")

# The broker keeps the C2 compiler (it starts as fast without it and serves the
# benchmarks faster with it); the one-shot storage tool stops at C1.
JVM_OPTS = ["-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-Xss512k", "-XX:+ExitOnOutOfMemoryError"]
JVM_OPTS += ["-Djava.awt.headless=true", "-Dlog4j2.disable.jmx=true"]
TOOL_JVM_OPTS = ["-XX:TieredStopAtLevel=1", "-Xmx256m"]

SERVER_PROPERTIES = Path(__file__).with_name("kafka-server.properties")  # a template for str.format
LOG4J2 = Path(__file__).with_name("kafka-log4j2.properties")


class BrokerUnavailable(process.PartUnavailable):
    """No broker could be had: ``summary`` says why and what to do, ``detail`` holds the log tail."""


# --------------------------------------------------------------------------- kafka-python


def _admin(bootstrap: str, timeout_s: float) -> Any:
    """A kafka-python (3+) ``KafkaAdminClient``, to use in a ``with`` block."""
    try:
        import kafka
        from kafka.admin import KafkaAdminClient
    except ImportError:
        raise BrokerUnavailable("the broker launcher needs kafka-python: `pip install -e '.[dev]'`") from None
    if int(kafka.__version__.split(".")[0]) < 3:
        raise BrokerUnavailable(f"the broker launcher needs kafka-python >= 3, not {kafka.__version__}")
    ms = int(timeout_s * 1000)
    from streams.kafka_client import IoThreadClient  # closes on its IO thread: see there

    return KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        request_timeout_ms=ms,
        bootstrap_timeout_ms=ms,
        kafka_client=IoThreadClient,
    )


def broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when a bootstrap server answers a metadata request listing a live broker."""
    # a closed port is told apart without a client (one that fails to bootstrap leaves its IO thread behind)
    hosts = [item.strip().split("://")[-1].rpartition(":") for item in bootstrap.split(",")]
    if not any(p.isdigit() and process.port_open(h.strip("[]"), int(p), min(timeout_s, 2)) for h, _, p in hosts):
        return False
    try:
        with _admin(bootstrap, timeout_s) as admin:
            return bool(admin.describe_cluster()["brokers"])
    except BrokerUnavailable:
        raise
    except Exception:  # noqa: BLE001 - whatever the client raises, the broker does not answer
        return False


def create_topics(bootstrap: str, timeout_s: float = 30) -> None:
    """Create the topics of ``schemas.topics.TOPIC_SPECS`` (partitions, configs, replication
    factor 1), leaving those that exist alone; return once each partition has a leader."""
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    from schemas.topics import TOPIC_SPECS

    try:
        with _admin(bootstrap, timeout_s) as admin:
            existing = set(admin.list_topics())
            wanted = {
                s.name: {"num_partitions": s.partitions, "replication_factor": 1, "configs": dict(s.configs)}
                for s in TOPIC_SPECS
                if s.name not in existing
            }
            if wanted:
                with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by someone else
                    admin.create_topics(wanted)
            admin.wait_for_topics([s.name for s in TOPIC_SPECS], timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create the topics on {bootstrap}: {exc!r}") from None


_create_topics = create_topics  # start_broker's keyword argument of the same name hides it


# --------------------------------------------------------------------------- jars


def cache_dir() -> Path:
    root = os.environ.get("WATTMETER_CACHE_DIR") or str(Path.home() / ".cache" / "wattmeter")
    return Path(root).expanduser() / f"kafka-{KAFKA_VERSION}"


def jars_cached() -> bool:
    """Whether the jars are fetched (then only `java` is needed): the stamp file
    ``complete`` holds the hash of the pom they were fetched with."""
    try:
        pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()
        return pom_hash in (cache_dir() / "complete").read_text() and (cache_dir() / "lib").is_dir()
    except OSError:
        return False


def fetch_jars() -> Path:
    """The Kafka jars, fetched with Maven once, under a file lock."""
    root = cache_dir()
    with process.file_lock(root / ".lock"):  # another process may be fetching the same jars
        if jars_cached():
            return root / "lib"
        (root / "complete").unlink(missing_ok=True)
        shutil.rmtree(root / "lib", ignore_errors=True)
        command = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime"]
        command.append(f"-DoutputDirectory={root / 'lib'}")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            done = subprocess.CompletedProcess(command, -1, "", f"(no answer within {MAVEN_TIMEOUT_S:.0f} s)")
        if done.returncode != 0 or not any((root / "lib").glob("kafka_2.13-*.jar")):
            raise BrokerUnavailable(
                f"Maven could not fetch {KAFKA_COORDINATES} from Maven Central (exit {done.returncode}); is the "
                "network or ~/.m2/settings.xml right? (WATTMETER_MAVEN_TIMEOUT_S sets how long it may take)",
                (done.stdout + done.stderr).strip()[-3000:],
            )
        (root / "complete").write_text(f"{KAFKA_COORDINATES}\n{hashlib.sha256(POM.read_bytes()).hexdigest()}\n")
    return root / "lib"


def _java(state_dir: Path, *args: str) -> list[str]:
    logs = [f"-Dkafka.logs.dir={state_dir / 'logs'}", f"-Dlog4j2.configurationFile={LOG4J2}"]
    user_opts = shlex.split(os.environ.get("WATTMETER_KAFKA_JVM_OPTS", ""))
    return ["java", *JVM_OPTS, *user_opts, *logs, "-cp", f"{fetch_jars()}{os.sep}*", *args]


# --------------------------------------------------------------------------- handle


@dataclass
class BrokerHandle:
    """A broker at ``bootstrap`` (its ``address``). ``stop()`` is safe twice and a no-op for an
    external broker; for the jar broker ``kill()`` SIGKILLs it, ``start()`` starts it again
    on the same ports with the same data, ``restart()`` does both."""

    bootstrap: str
    mode: str  # external | testcontainers | jars
    state_dir: Path | None = None
    port: int = 0
    controller_port: int = 0
    pid: int | None = None
    container_id: str | None = None
    _child: process.ChildProcess | None = field(default=None, repr=False, compare=False)
    _container: Any = field(default=None, repr=False, compare=False)

    @property
    def address(self) -> str:
        return self.bootstrap

    @property
    def data_dir(self) -> Path | None:
        return self.state_dir / "data" if self.state_dir else None

    @property
    def log_path(self) -> Path | None:
        return self.state_dir / "logs" / "broker.log" if self.state_dir else None

    @property
    def _properties(self) -> str:
        return str(Path(self.state_dir or ".") / "server.properties")

    def alive(self) -> bool:
        """Whether the broker process (jar mode) is running; True for the other modes."""
        if self.mode != "jars":
            return True
        if self._child is not None:
            return self._child.alive()
        return self.pid is not None and process.pid_running(self.pid, self._properties)

    def answers(self, timeout_s: float = 3.0) -> bool:
        return broker_answers(self.bootstrap, timeout_s)

    def start(self, timeout_s: float = 90) -> None:
        """Start the jar broker of ``state_dir``; return once it answers, else raise
        ``BrokerUnavailable`` with the tail of its log."""
        if self.mode != "jars" or self.log_path is None:
            raise BrokerUnavailable(f"start() is only supported for the jar broker, not for mode {self.mode!r}")
        ports = (self.port, self.controller_port)
        if not process.wait_until(lambda: all(process.can_bind(port) for port in ports), 5, 0.2):
            raise BrokerUnavailable(
                f"ports {ports} of the Kafka broker in {self.state_dir} are taken", "", self.log_path
            )
        command = _java(Path(self.state_dir or "."), "kafka.Kafka", self._properties)
        self._child = process.ChildProcess("the Kafka broker", command, self.log_path, cwd=self.state_dir)
        try:
            self._child.start(lambda: broker_answers(self.bootstrap, 2), timeout_s, BrokerUnavailable)
        except BaseException:
            self._forget()
            raise
        self.pid = self._child.pid
        self._write_info()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker: SIGTERM to its process group, SIGKILL after ``timeout_s``."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
        elif self.container_id and shutil.which("docker"):
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(["docker", "rm", "-f", self.container_id], capture_output=True, timeout=30)
        elif self._child is not None:
            self._child.stop(timeout_s)
        elif self.pid is not None and self.alive():
            process.stop_pid(self.pid, timeout_s)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the broker (fault tests); ``restart()`` brings it back with its data."""
        if self.mode != "jars":
            return
        if self.pid is not None and self.alive():
            process.signal_group(self.pid, signal.SIGKILL)
            process.wait_until(lambda: not self.alive(), 10)
        self._forget()

    def restart(self, timeout_s: float = 90) -> None:
        """Stop (if running) and start the same broker: same ports, same data (jar mode)."""
        if self.mode != "jars":
            raise BrokerUnavailable(f"restart() is only supported for the jar broker, not for mode {self.mode!r}")
        self.stop()
        self.start(timeout_s)

    def _forget(self) -> None:
        if self.mode != "external":
            self.pid, self._child, self.container_id, self._container = None, None, None, None
            if self.state_dir is not None:
                (self.state_dir / "broker.json").unlink(missing_ok=True)

    def _write_info(self) -> None:
        assert self.state_dir is not None
        info = {k: getattr(self, k) for k in ("pid", "bootstrap", "mode", "port", "controller_port", "container_id")}
        jars = self.mode == "jars"
        info |= {"state_dir": str(self.state_dir), "log": str(self.log_path) if jars else None}
        info |= {"kafka_version": KAFKA_VERSION if jars else None, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (self.state_dir / "broker.json.tmp").write_text(json.dumps(info, indent=2) + "\n")
        (self.state_dir / "broker.json.tmp").replace(self.state_dir / "broker.json")


# --------------------------------------------------------------------------- start


def load_handle(state_dir: Path) -> BrokerHandle | None:
    """The running broker that ``<state_dir>/broker.json`` names, or None."""
    state_dir = Path(state_dir).resolve()
    try:
        info = json.loads((state_dir / "broker.json").read_text())
        handle = BrokerHandle(info["bootstrap"], info["mode"], state_dir, int(info.get("port") or 0))
        handle.controller_port, handle.pid = int(info.get("controller_port") or 0), info.get("pid")
        handle.container_id = info.get("container_id")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if handle.mode == "jars":
        return handle if handle.pid and handle.alive() else None
    return handle if handle.mode == "testcontainers" and broker_answers(handle.bootstrap, 3) else None


def start_jar_broker(state_dir: Path, timeout_s: float = 90) -> BrokerHandle:
    """A fresh jar broker in ``state_dir`` (its data, config and log live there). A broker
    left running from that directory is stopped first."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    leftover = load_handle(state_dir)
    if leftover is not None:
        leftover.stop()
    for owned in ("data", "logs"):
        shutil.rmtree(state_dir / owned, ignore_errors=True)
        (state_dir / owned).mkdir()
    port = process.free_port()
    handle = BrokerHandle(f"127.0.0.1:{port}", "jars", state_dir, port, process.free_port({port}))
    config = SERVER_PROPERTIES.read_text().format(
        port=port, controller_port=handle.controller_port, data_dir=handle.data_dir
    )
    (state_dir / "server.properties").write_text(config)
    cluster_id = "-"
    while cluster_id.startswith("-"):  # an id starting with "-" would be read as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    fmt = _java(
        state_dir, *TOOL_JVM_OPTS, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", handle._properties
    )
    try:
        done = subprocess.run(fmt, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BrokerUnavailable("formatting the KRaft storage did not finish within 120 s") from None
    if done.returncode != 0:
        raise BrokerUnavailable(
            f"formatting the KRaft storage in {handle.data_dir} failed (exit {done.returncode}; is `java` 17+?)",
            (done.stdout + done.stderr)[-3000:],
        )
    handle.start(timeout_s)
    return handle


def _start_container(state_dir: Path | None) -> BrokerHandle:
    from testcontainers.kafka import KafkaContainer

    container = KafkaContainer()
    with contextlib.suppress(AttributeError):
        container = container.with_kraft()
    container.start()
    handle = BrokerHandle(
        container.get_bootstrap_server(), "testcontainers", Path(state_dir).resolve() if state_dir else None
    )
    handle.container_id, handle._container = getattr(container.get_wrapped_container(), "id", None), container
    if handle.state_dir is not None:
        handle.state_dir.mkdir(parents=True, exist_ok=True)
        handle._write_info()
    return handle


def _docker_status() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return "docker is not on PATH"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    last = ([ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()] or [f"exit {done.returncode}"])[-1]
    return f"`docker info` failed: {last.strip()}" if done.returncode else None


def _testcontainers_importable() -> bool:
    try:
        import testcontainers.kafka  # noqa: F401

        return True
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        return False


def _jars_usable() -> bool:
    return shutil.which("java") is not None and (shutil.which("mvn") is not None or jars_cached())


def _missing(docker_why: str | None) -> BrokerUnavailable:
    tools = ", ".join(t for t in ("java", "mvn") if shutil.which(t) is None) or "none"
    docker = f"no Docker engine answers ({docker_why})" if docker_why else "the testcontainers package is not installed"
    return BrokerUnavailable(
        f"cannot start a Kafka broker: KAFKA_BOOTSTRAP_SERVERS is not set; {docker}; java and mvn are not both "
        f"on PATH (missing: {tools}). Install a JDK 17+ and Maven 3 (the Kafka jars are fetched from Maven "
        "Central once), or start Docker and `pip install testcontainers`, or set KAFKA_BOOTSTRAP_SERVERS=host:port."
    )


def start_broker(state_dir: Path | None = None, *, create_topics: bool = True, timeout_s: float = 90) -> BrokerHandle:
    """A broker to talk to, started if need be, with the wattmeter topics created
    (unless ``create_topics=False``). ``state_dir``
    (default ``.wattmeter/kafka``) holds a jar broker's data, config, log and ``broker.json``;
    a broker still running from it is stopped first."""
    mode = os.environ.get("WATTMETER_KAFKA_MODE", "").strip().lower() or "auto"
    if mode not in ("auto", *MODES):
        raise BrokerUnavailable(f"WATTMETER_KAFKA_MODE={mode!r} is not one of auto, {', '.join(MODES)}")
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    handle: BrokerHandle | None = None
    docker_why: str | None = "not tried"  # None: Docker answers and testcontainers is there; "": no testcontainers
    if mode == "external" or (mode == "auto" and external):
        if not external:
            raise BrokerUnavailable("WATTMETER_KAFKA_MODE=external but KAFKA_BOOTSTRAP_SERVERS is not set")
        if not process.wait_until(lambda: broker_answers(external, 3), min(timeout_s, 15), 0.5):
            raise BrokerUnavailable(
                f"KAFKA_BOOTSTRAP_SERVERS={external!r} does not answer a Kafka metadata request "
                "(unset it to start a local broker instead)"
            )
        handle = BrokerHandle(external, "external")
    elif mode in ("auto", "testcontainers"):
        docker_why = _docker_status() or (None if _testcontainers_importable() else "")
        if docker_why is None:
            try:
                handle = _start_container(state_dir)
            except Exception as exc:  # noqa: BLE001 - an image pull or engine failure: fall back to the jars
                if mode == "testcontainers" or not _jars_usable():
                    raise BrokerUnavailable(f"the testcontainers Kafka container did not start: {exc!r}") from None
                print(f"kafka_broker: the Kafka container did not start ({exc!r}); using the jars", file=sys.stderr)
        elif mode == "testcontainers":
            raise BrokerUnavailable(f"WATTMETER_KAFKA_MODE=testcontainers but {docker_why or 'no testcontainers'}")
    if handle is None and _jars_usable():
        handle = start_jar_broker(Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR, timeout_s)
    elif handle is None and mode == "jars":
        raise BrokerUnavailable("WATTMETER_KAFKA_MODE=jars but java and mvn are not both on PATH")
    elif handle is None:
        raise _missing(docker_why or None)
    if create_topics:
        try:
            _create_topics(handle.bootstrap)
        except BaseException:
            handle.stop()  # a no-op for an external broker
            raise
    return handle


# --------------------------------------------------------------------------- CLI


def _cli_start(state_dir: Path, args: argparse.Namespace) -> BrokerHandle:
    """The broker running from ``state_dir`` (``start`` only; its topics created), else a new one."""
    if args.command == "start":
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # a detached container outlives us
    handle = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else load_handle(state_dir)
    if handle is None:
        return start_broker(state_dir, create_topics=not args.no_topics, timeout_s=args.timeout)
    if not args.no_topics:
        create_topics(handle.bootstrap)
    return handle


def _describe(handle: BrokerHandle) -> str:
    jars = f", pid {handle.pid}, ports {handle.port}/{handle.controller_port}" if handle.mode == "jars" else ""
    return f"{handle.mode}, {'answering' if handle.answers() else 'not answering'}{jars}"


def main(argv: list[str] | None = None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--no-topics", action="store_true", help="do not create the wattmeter topics")

    return process.part_cli(
        argv,
        "kafka_broker",
        DEFAULT_STATE_DIR,
        load_handle,
        _cli_start,
        lambda b: b.bootstrap,
        _describe,
        options,
        "--state-dir",
    )


if __name__ == "__main__":
    sys.exit(main())
