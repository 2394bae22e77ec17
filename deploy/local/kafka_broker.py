"""Start a single-node Apache Kafka broker (KRaft) for tests, demos and laptops.

Where it comes from, in order:
1. `KAFKA_BOOTSTRAP_SERVERS` set: the user's broker, used as it is.
2. A Docker engine answering and `testcontainers` installed: a KafkaContainer.
3. `java` and `mvn` on PATH: the Apache Kafka jars from Maven Central, fetched once
   into `$WATTMETER_CACHE_DIR/kafka-<version>/lib` (default ~/.cache/wattmeter) and
   run with the local JDK on free loopback ports.
Otherwise `BrokerUnavailable` says what is missing. Nothing here waits forever.

    python -m deploy.local.kafka_broker start|stop|status|run [--state-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "4.1.0"
POM = Path(__file__).with_name("kafka-pom.xml")
DEFAULT_STATE_DIR = Path(".wattmeter/kafka")

LOG4J2 = """\
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = INFO
"""


class BrokerUnavailable(RuntimeError):
    """No broker could be had; the message says why and what to install or set."""


def cache_dir() -> Path:
    return Path(os.environ.get("WATTMETER_CACHE_DIR", Path.home() / ".cache" / "wattmeter")) / f"kafka-{KAFKA_VERSION}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when the cluster answers a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=int(timeout_s * 1000))
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def create_topics(bootstrap: str) -> None:
    """Create every topic of schemas.topics with its partitions and configs (idempotent)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from schemas.topics import TOPIC_SPECS

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=30_000)
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(s.name, s.partitions, 1, topic_configs=dict(s.configs))
                  for s in TOPIC_SPECS if s.name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + 30
        while not {s.name for s in TOPIC_SPECS} <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise BrokerUnavailable("topics were created but do not show up in metadata after 30 s")
            time.sleep(0.2)
    finally:
        admin.close()


def fetch_jars() -> Path:
    """The Kafka jars, fetched once with Maven; a stamp file marks a complete fetch."""
    lib = cache_dir() / "lib"
    stamp = cache_dir() / "complete"
    if stamp.exists():
        return lib
    if lib.exists():
        shutil.rmtree(lib)
    command = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={lib}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise BrokerUnavailable("Maven did not fetch the Kafka jars within 10 minutes") from None
    if result.returncode != 0:
        raise BrokerUnavailable(f"Maven could not fetch Apache Kafka {KAFKA_VERSION}: "
                                f"{(result.stdout + result.stderr).strip()[-2000:]}")
    stamp.write_text(KAFKA_VERSION)
    return lib


@dataclass
class BrokerHandle:
    """A running broker. `stop()` is safe twice; `restart()` keeps ports and data."""

    bootstrap: str
    mode: str  # external | testcontainers | jars
    state_dir: Path | None = None
    port: int = 0
    controller_port: int = 0
    pid: int | None = None
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _container: object | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.mode != "jars" or self.pid is None:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout_s: float = 20) -> None:
        if self.mode == "testcontainers" and self._container is not None:
            self._container.stop()  # type: ignore[attr-defined]
            self._container = None
        if self.mode != "jars" or self.pid is None:
            return
        _signal_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._running():
            time.sleep(0.1)
        if self._running():
            _signal_group(self.pid, signal.SIGKILL)
            while self._running():
                time.sleep(0.05)
        self.pid = None
        self._process = None

    def kill(self) -> None:
        """SIGKILL the broker (fault tests)."""
        if self.mode == "jars" and self.pid is not None:
            _signal_group(self.pid, signal.SIGKILL)
            while self._running():
                time.sleep(0.05)
            self.pid = None
            self._process = None

    def restart(self, timeout_s: float = 90) -> None:
        """Stop and start the same broker: same ports, same data (jar mode only)."""
        if self.mode != "jars" or self.state_dir is None:
            raise BrokerUnavailable(f"restart is only supported for the jar broker, not {self.mode}")
        self.stop()
        self._launch(timeout_s)

    def _running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self.alive()

    def _launch(self, timeout_s: float) -> None:
        assert self.state_dir is not None
        lib = fetch_jars()
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        java = [
            "java", "-Xms256m", "-Xmx768m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
            "-Djava.awt.headless=true", f"-Dkafka.logs.dir={log_dir}",
            f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}",
            "-cp", f"{lib}/*",
        ]
        properties = self.state_dir / "server.properties"
        with open(log_dir / "stdout.log", "ab") as out:
            self._process = subprocess.Popen(java + ["kafka.Kafka", str(properties)], stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self._process.pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerUnavailable(f"the Kafka broker exited with {self._process.returncode}:\n"
                                        f"{_tail(log_dir / 'stdout.log')}\n{_tail(log_dir / 'broker.log')}")
            if _port_open(self.port) and broker_answers(self.bootstrap, 3):
                (self.state_dir / "broker.json").write_text(json.dumps(
                    {"pid": self.pid, "bootstrap": self.bootstrap, "mode": self.mode, "port": self.port,
                     "controller_port": self.controller_port}))
                return
            time.sleep(0.3)
        self.stop()
        raise BrokerUnavailable(f"the Kafka broker did not answer on {self.bootstrap} within {timeout_s:.0f} s:\n"
                                f"{_tail(log_dir / 'broker.log')}")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} was not written)"


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def start_jar_broker(state_dir: Path, timeout_s: float) -> BrokerHandle:
    state_dir = state_dir.resolve()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    (state_dir / "data").mkdir(parents=True)
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    (state_dir / "server.properties").write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={state_dir / 'data'}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.cleaner.backoff.ms=1000",
        "num.network.threads=2",
        "num.io.threads=4",
        "",
    ]))
    (state_dir / "log4j2.properties").write_text(LOG4J2)
    lib = fetch_jars()
    fmt = subprocess.run(
        ["java", "-Xmx256m", "-XX:TieredStopAtLevel=1", f"-Dlog4j2.configurationFile={state_dir / 'log4j2.properties'}",
         f"-Dkafka.logs.dir={state_dir / 'logs'}", "-cp", f"{lib}/*", "kafka.tools.StorageTool", "format",
         "-t", uuid.uuid4().hex[:22], "-c", str(state_dir / "server.properties")],
        capture_output=True, text=True, timeout=120)
    if fmt.returncode != 0:
        raise BrokerUnavailable(f"formatting the KRaft storage failed: {(fmt.stdout + fmt.stderr)[-2000:]}")
    handle = BrokerHandle(f"127.0.0.1:{port}", "jars", state_dir, port, controller_port)
    handle._launch(timeout_s)
    return handle


def start_broker(state_dir: Path | None = None, *, create: bool = True, timeout_s: float = 90) -> BrokerHandle:
    """A broker to talk to, started if need be, with the wattmeter topics created."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        if not broker_answers(external, 10):
            raise BrokerUnavailable(f"KAFKA_BOOTSTRAP_SERVERS={external} does not answer")
        handle = BrokerHandle(external, "external")
    elif _docker_answers() and _importable("testcontainers.kafka"):
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer().with_kraft()
        container.start()
        handle = BrokerHandle(container.get_bootstrap_server(), "testcontainers", _container=container)
    elif shutil.which("java") and shutil.which("mvn"):
        handle = start_jar_broker(Path(state_dir or DEFAULT_STATE_DIR), timeout_s)
    else:
        raise BrokerUnavailable(
            "cannot start a Kafka broker: KAFKA_BOOTSTRAP_SERVERS is not set, no Docker engine answers "
            "(with the testcontainers package), and java and mvn are not both on PATH. Install a JDK (17+) "
            "and Maven, or point KAFKA_BOOTSTRAP_SERVERS at a broker.")
    if create:
        create_topics(handle.bootstrap)
    return handle


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _load(state_dir: Path) -> BrokerHandle | None:
    info_path = state_dir / "broker.json"
    if not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    handle = BrokerHandle(info["bootstrap"], info["mode"], state_dir.resolve(), info["port"],
                          info["controller_port"], info["pid"])
    return handle if handle.alive() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.kafka_broker",
                                     description="Start or stop wattmeter's local single-node Kafka broker (KRaft).")
    parser.add_argument("command", choices=["start", "stop", "status", "run"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            handle = _load(args.state_dir)
            print(f"running at {handle.bootstrap} (pid {handle.pid})" if handle else "not running")
            return 0 if handle else 1
        if args.command == "stop":
            handle = _load(args.state_dir)
            if handle:
                handle.stop()
                print("stopped")
            return 0
        handle = _load(args.state_dir) if args.command == "start" else None
        if handle is None:
            handle = start_broker(args.state_dir)
        else:
            create_topics(handle.bootstrap)
        if args.command == "start":
            print(handle.bootstrap)
            return 0
        print(f"Kafka broker at {handle.bootstrap}; Ctrl-C stops it", flush=True)
        stop = [False]
        signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
        try:
            while not stop[0] and handle.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        handle.stop()
        return 0
    except BrokerUnavailable as exc:
        print(f"kafka_broker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
