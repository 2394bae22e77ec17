"""Start a single-node Apache Kafka broker (KRaft) for tests, demos and laptops.

Where the broker comes from, in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: that broker, used as it is (it must answer).
2. A Docker engine answers ``docker info`` and the ``testcontainers`` package is
   installed: a ``testcontainers.kafka.KafkaContainer`` in KRaft mode.
3. ``java`` (17+) and ``mvn`` are on PATH: the Apache Kafka jars from Maven Central,
   fetched once (``kafka-pom.xml``) into ``$WATTMETER_CACHE_DIR/kafka-<version>/lib``
   (default ``~/.cache/wattmeter``) and run with the local JDK on free loopback ports,
   with the KRaft storage, config and log under the state directory.

Otherwise ``BrokerUnavailable`` says what is missing. Nothing here waits forever.
``WATTMETER_KAFKA_MODE=external|testcontainers|jars`` forces one way.

    python -m deploy.local.kafka_broker start|stop|status|run [--state-dir DIR]

Only the standard library is imported here; kafka-python is imported lazily, for
creating the topics of ``schemas.topics``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "4.1.0"
KAFKA_COORDINATES = f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}"
POM = Path(__file__).with_name("kafka-pom.xml")
DEFAULT_STATE_DIR = Path(".wattmeter/kafka")
MAVEN_TIMEOUT_S = float(os.environ.get("WATTMETER_MAVEN_TIMEOUT_S", "600"))
STOP_TIMEOUT_S = 15.0
MODES = ("external", "testcontainers", "jars")

# The broker keeps the C2 compiler (it starts as fast without it and serves the
# benchmarks faster with it); the one-shot storage tool stops at C1.
JVM_OPTS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-Xss512k",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dlog4j2.disable.jmx=true",
]
TOOL_JVM_OPTS = ["-XX:TieredStopAtLevel=1", "-Xmx256m"]

# log4j2 writes to stdout, which goes to <state_dir>/logs/broker.log together with
# anything the JVM itself prints (a bad flag, a missing class).
LOG4J2 = """\
status = warn
name = wattmeter-kafka
shutdownHook = disable
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
"""


class BrokerUnavailable(RuntimeError):
    """No broker could be had. ``summary`` is one line saying why and what to do;
    ``str()`` adds the details (the tail of the broker log) when there are any."""

    def __init__(self, summary: str, detail: str = "", log_path: Path | None = None) -> None:
        self.summary = summary
        self.detail = detail
        self.log_path = log_path
        super().__init__(f"{summary}\n{detail}" if detail else summary)

    def one_line(self) -> str:
        """The summary on one line, with the telling line of the details and the log path."""
        text = " ".join(self.summary.split())
        lines = [ln.strip() for ln in self.detail.splitlines() if ln.strip() and not ln.startswith("===")]
        for pattern in (r"^(Caused by: )?[\w.$]+(Exception|Error): ", r"Unrecognized|Error:", r"\bERROR\b"):
            telling = [ln for ln in lines if re.search(pattern, ln)]
            if telling:
                text += f": {telling[0][:300]}"
                break
        else:
            if lines:
                text += f": {lines[-1][:300]}"
        return text + (f" (broker log: {self.log_path})" if self.log_path else "")


# --------------------------------------------------------------------------- probes


def _free_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A free loopback port, below the kernel's ephemeral range when there is room, so
    that no client connection can take it while the broker is down for a restart."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low > 21000:
        for _ in range(200):
            port = random.randint(20000, low - 1)
            if port not in taken and _can_bind(port):
                return port
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def free_port() -> int:
    return _free_port()


def _can_bind(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for item in bootstrap.split(","):
        item = item.strip()
        if "://" in item:
            item = item.split("://", 1)[1]
        host, _, port = item.rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _metadata_brokers(host: str, port: int, timeout_s: float) -> int:
    """Send a Kafka Metadata v4 request (no topics) and return how many live brokers
    the answer lists; a broker that is still fenced lists none. Raises OSError."""
    client_id = b"wattmeter-probe"
    correlation = random.randint(1, 2**31 - 1)
    body = struct.pack(">hhih", 3, 4, correlation, len(client_id)) + client_id + struct.pack(">ib", 0, 0)
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
        if not 12 <= size <= 64 * 1024 * 1024:
            raise OSError(errno.EPROTO, f"unexpected Kafka response size {size}")
        answer = _recv_exactly(sock, min(size, 12))
    got, _throttle, brokers = struct.unpack(">iii", answer)
    if got != correlation:
        raise OSError(errno.EPROTO, "the Kafka response does not match the request")
    return brokers


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError(errno.ECONNRESET, "connection closed by the broker")
        data += chunk
    return data


def broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when a bootstrap server answers a metadata request listing a live broker
    (a raw Kafka protocol check: the standard library only, no kafka-python)."""
    for host, port in _split_bootstrap(bootstrap):
        try:
            if _metadata_brokers(host, port, timeout_s) > 0:
                return True
        except (OSError, struct.error):
            continue
    return False


def _docker_status() -> str | None:
    """None when a Docker engine answers, else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not on PATH"
    try:
        result = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 5 s"
    except OSError as exc:
        return f"`docker info` failed: {exc}"
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        return f"`docker info` failed: {lines[-1] if lines else f'exit {result.returncode}'}"
    return None


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        return False


# --------------------------------------------------------------------------- topics


def create_topics(bootstrap: str, timeout_s: float = 30) -> None:
    """Create every topic of ``schemas.topics.TOPIC_SPECS`` with its partitions and
    configs, replication factor 1. Idempotent: topics that exist are left as they are.
    Returns once every topic is in the metadata with a leader for each partition."""
    try:
        import kafka
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError, TopicAlreadyExistsError
    except ImportError:
        raise BrokerUnavailable(
            "creating the topics needs kafka-python: `pip install -e '.[dev]'` "
            "(or pass create_topics=False / --no-topics)"
        ) from None

    from schemas.topics import TOPIC_SPECS

    deadline = time.monotonic() + timeout_s
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","),
            client_id="wattmeter-topics",
            request_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create the topics: no Kafka broker answers at {bootstrap} ({exc!r})") from None
    try:
        wanted = [s for s in TOPIC_SPECS if s.name not in set(admin.list_topics())]
        failures = []
        if wanted:
            if int(kafka.__version__.split(".")[0]) >= 3:
                result = admin.create_topics(
                    {
                        s.name: {"num_partitions": s.partitions, "replication_factor": 1, "configs": dict(s.configs)}
                        for s in wanted
                    },
                    timeout_ms=int(timeout_s * 1000),
                    raise_errors=False,
                )
                codes = [(t["name"], t["error_code"], t.get("error_message")) for t in result["topics"]]
            else:  # kafka-python 2.x
                from kafka.admin import NewTopic

                try:
                    response = admin.create_topics(
                        [NewTopic(s.name, s.partitions, 1, topic_configs=dict(s.configs)) for s in wanted],
                        timeout_ms=int(timeout_s * 1000),
                    )
                    codes = [(t[0], t[1], t[2] if len(t) > 2 else None) for t in response.topic_errors]
                except TopicAlreadyExistsError:
                    codes = []
            already = TopicAlreadyExistsError.errno
            failures = [
                f"{name}: error {code} {message or ''}".strip()
                for name, code, message in codes
                if code not in (0, already)
            ]
        if failures:
            raise BrokerUnavailable(f"the broker at {bootstrap} refused to create topics: {'; '.join(failures)}")
        names = {s.name for s in TOPIC_SPECS}
        while True:
            topics = {t.get("name", t.get("topic")): t for t in admin.describe_topics(sorted(names))}
            if names <= set(topics) and all(_has_leaders(t) for t in topics.values()):
                return
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"the topics were created but have no leaders after {timeout_s:g} s")
            time.sleep(0.2)
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create the topics on {bootstrap}: {exc!r}") from None
    finally:
        admin.close()


_create_topics = create_topics  # start_broker's keyword argument of the same name hides it


def _has_leaders(topic: dict) -> bool:
    if topic.get("error_code", 0) != 0:
        return False
    partitions = topic.get("partitions") or []
    return bool(partitions) and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in partitions)


# --------------------------------------------------------------------------- jars


def cache_dir() -> Path:
    root = os.environ.get("WATTMETER_CACHE_DIR") or str(Path.home() / ".cache" / "wattmeter")
    return Path(root).expanduser() / f"kafka-{KAFKA_VERSION}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_jars() -> Path:
    """The Kafka jars, fetched with Maven once. A stamp file (holding the pom's hash)
    marks a complete fetch; with it in place no Maven runs at all."""
    root = cache_dir()
    lib, stamp = root / "lib", root / "complete"
    pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()
    if _stamp_ok(stamp, lib, pom_hash):
        return lib
    with _file_lock(root / ".lock"):  # another process may be fetching the same jars
        if _stamp_ok(stamp, lib, pom_hash):
            return lib
        stamp.unlink(missing_ok=True)
        partial = root / f"lib.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(partial, ignore_errors=True)
            raise BrokerUnavailable(
                f"Maven did not fetch the Apache Kafka {KAFKA_VERSION} jars within "
                f"{MAVEN_TIMEOUT_S:.0f} s (set WATTMETER_MAVEN_TIMEOUT_S to wait longer)"
            ) from None
        if result.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
            shutil.rmtree(partial, ignore_errors=True)
            raise BrokerUnavailable(
                f"Maven could not fetch {KAFKA_COORDINATES} from Maven Central "
                f"(exit {result.returncode}); is the network or ~/.m2/settings.xml right?",
                (result.stdout + result.stderr).strip()[-3000:],
            )
        old = root / f"lib.old-{os.getpid()}"
        if lib.exists():
            lib.rename(old)  # swapped, not deleted first: a JVM starting now still finds jars
        partial.rename(lib)
        shutil.rmtree(old, ignore_errors=True)
        stamp.write_text(f"{KAFKA_COORDINATES}\n{pom_hash}\n")
    return lib


def jars_cached() -> bool:
    """Whether the jars are fetched already (then `mvn` is not needed, only `java`)."""
    try:
        pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()
    except OSError:
        return False
    return _stamp_ok(cache_dir() / "complete", cache_dir() / "lib", pom_hash)


def _stamp_ok(stamp: Path, lib: Path, pom_hash: str) -> bool:
    try:
        return pom_hash in stamp.read_text() and lib.is_dir()
    except OSError:
        return False


def _java_command(lib: Path, state_dir: Path, extra: list[str]) -> list[str]:
    user_opts = shlex.split(os.environ.get("WATTMETER_KAFKA_JVM_OPTS", ""))
    return [
        "java",
        *JVM_OPTS,
        *user_opts,
        f"-Dkafka.logs.dir={state_dir / 'logs'}",
        f"-Dlog4j2.configurationFile={state_dir / 'log4j2.properties'}",
        "-cp",
        f"{lib}{os.sep}*",
        *extra,
    ]


def _server_properties(state_dir: Path, port: int, controller_port: int) -> str:
    return "\n".join(
        [
            "# written by deploy/local/kafka_broker.py: a single-node KRaft broker on loopback",
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
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "share.coordinator.state.topic.num.partitions=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            # after a SIGKILL the old registration must expire before the broker is back:
            # 4 s rather than the default 9 s
            "broker.heartbeat.interval.ms=500",
            "broker.session.timeout.ms=4000",
            "log.cleaner.backoff.ms=1000",
            "log.cleaner.threads=1",
            "log.cleaner.dedupe.buffer.size=33554432",
            "num.network.threads=2",
            "num.io.threads=4",
            "num.recovery.threads.per.data.dir=1",
            "background.threads=4",
            "",
        ]
    )


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


# --------------------------------------------------------------------------- handle


@dataclass
class BrokerHandle:
    """A broker to talk to at ``bootstrap``.

    ``stop()`` is safe to call twice and a no-op for an external broker. For the jar
    broker, ``kill()`` SIGKILLs it and ``restart()`` starts it again on the same ports
    with the same data directory.
    """

    bootstrap: str
    mode: str  # external | testcontainers | jars
    state_dir: Path | None = None
    port: int = 0
    controller_port: int = 0
    pid: int | None = None
    container_id: str | None = None
    _process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    _container: object | None = field(default=None, repr=False, compare=False)

    @property
    def data_dir(self) -> Path | None:
        return self.state_dir / "data" if self.state_dir else None

    @property
    def log_path(self) -> Path | None:
        return self.state_dir / "logs" / "broker.log" if self.state_dir else None

    def alive(self) -> bool:
        """Whether the broker process (jar mode) is running; True for the other modes."""
        if self.mode != "jars":
            return True
        if self._process is not None:
            return self._process.poll() is None
        return self.pid is not None and _is_broker_process(self.pid, self.state_dir)

    def answers(self, timeout_s: float = 3.0) -> bool:
        return broker_answers(self.bootstrap, timeout_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker: SIGTERM to its process group, SIGKILL after ``timeout_s``."""
        if self.mode == "testcontainers":
            self._stop_container()
            return
        if self.mode != "jars" or self.pid is None:
            return
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            if not self._wait_exit(timeout_s):
                _signal_group(self.pid, signal.SIGKILL)
                self._wait_exit(10)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the broker (fault tests); ``restart()`` brings it back with its data."""
        if self.mode != "jars" or self.pid is None:
            return
        if self.alive():
            _signal_group(self.pid, signal.SIGKILL)
            self._wait_exit(10)
        self._forget()

    def restart(self, timeout_s: float = 90) -> None:
        """Stop (if running) and start the same broker: same ports, same data (jar mode)."""
        if self.mode != "jars" or self.state_dir is None:
            raise BrokerUnavailable(f"restart() is only supported for the jar broker, not for mode {self.mode!r}")
        self.stop()
        self._launch(timeout_s)

    # -- internals

    def _forget(self) -> None:
        self.pid = None
        self._process = None
        if self.state_dir is not None:
            (self.state_dir / "broker.json").unlink(missing_ok=True)

    def _wait_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _stop_container(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.stop()  # type: ignore[attr-defined]
        elif self.container_id and shutil.which("docker"):
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(["docker", "rm", "-f", self.container_id], capture_output=True, timeout=30)
        self.container_id = None
        if self.state_dir is not None:
            (self.state_dir / "broker.json").unlink(missing_ok=True)

    def _launch(self, timeout_s: float) -> None:
        assert self.state_dir is not None
        lib = fetch_jars()
        log_path = self.log_path
        assert log_path is not None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for port in (self.port, self.controller_port):
            if not _wait_bindable(port, 5):
                raise BrokerUnavailable(
                    f"port {port} of the Kafka broker in {self.state_dir} is taken by another process",
                    log_path=log_path,
                )
        command = _java_command(lib, self.state_dir, ["kafka.Kafka", str(self.state_dir / "server.properties")])
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shlex.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.state_dir,
            )
        self.pid = self._process.pid
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                code = self._process.poll()
                if code is not None:
                    self._forget()
                    raise BrokerUnavailable(
                        f"the Kafka broker exited with status {code} while starting", _tail(log_path), log_path
                    )
                if broker_answers(self.bootstrap, 2):
                    break
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"the Kafka broker did not answer on {self.bootstrap} within {timeout_s:g} s",
                        _tail(log_path),
                        log_path,
                    )
                time.sleep(0.2)
        except BaseException:  # timeout, Ctrl-C: leave nothing running behind
            self.stop()
            raise
        self._write_info()

    def _write_info(self) -> None:
        assert self.state_dir is not None
        info = {
            "pid": self.pid,
            "bootstrap": self.bootstrap,
            "mode": self.mode,
            "port": self.port,
            "controller_port": self.controller_port,
            "container_id": self.container_id,
            "state_dir": str(self.state_dir),
            "log": str(self.log_path) if self.mode == "jars" else None,
            "kafka_version": KAFKA_VERSION if self.mode == "jars" else None,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = self.state_dir / "broker.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.state_dir / "broker.json")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _is_broker_process(pid: int, state_dir: Path | None) -> bool:
    """Whether ``pid`` is a live (not zombie) Kafka broker run with this state dir's
    config: a pid from broker.json may have been reused by something else."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            status = (proc / "stat").read_text().rpartition(")")[2].split()[:1]
            if status in (["Z"], ["X"]):
                return False
            args = (proc / "cmdline").read_bytes().split(b"\0")
            cmdline = [a.decode(errors="replace") for a in args]
        except OSError:
            return False
    else:  # no /proc (macOS): ask ps
        try:
            out = subprocess.run(
                ["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return True
        if not out or out.startswith("Z"):
            return False
        cmdline = out.split()
    if "kafka.Kafka" not in cmdline:
        return False
    return state_dir is None or str(state_dir / "server.properties") in cmdline


def _wait_bindable(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _can_bind(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} was not written)"
    return "\n".join(text[-lines:])


# --------------------------------------------------------------------------- start


def load_handle(state_dir: Path) -> BrokerHandle | None:
    """The running broker that ``<state_dir>/broker.json`` names, or None."""
    state_dir = Path(state_dir).resolve()
    try:
        info = json.loads((state_dir / "broker.json").read_text())
        handle = BrokerHandle(
            info["bootstrap"],
            info["mode"],
            state_dir,
            int(info.get("port") or 0),
            int(info.get("controller_port") or 0),
            info.get("pid"),
            info.get("container_id"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if handle.mode == "jars":
        return handle if handle.pid and handle.alive() else None
    if handle.mode == "testcontainers":
        return handle if broker_answers(handle.bootstrap, 3) else None
    return None


def start_jar_broker(state_dir: Path, timeout_s: float = 90) -> BrokerHandle:
    """A fresh jar broker in ``state_dir`` (its data, config and log live there). A
    broker left running from that directory is stopped first."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    leftover = load_handle(state_dir)
    if leftover is not None:
        leftover.stop()
    for owned in ("data", "logs"):
        shutil.rmtree(state_dir / owned, ignore_errors=True)
    for owned in ("server.properties", "log4j2.properties", "broker.json"):
        (state_dir / owned).unlink(missing_ok=True)
    (state_dir / "data").mkdir()
    (state_dir / "logs").mkdir()
    port = _free_port()
    controller_port = _free_port({port})
    (state_dir / "server.properties").write_text(_server_properties(state_dir, port, controller_port))
    (state_dir / "log4j2.properties").write_text(LOG4J2)
    lib = fetch_jars()
    command = _java_command(
        lib,
        state_dir,
        [
            *TOOL_JVM_OPTS,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _cluster_id(),
            "-c",
            str(state_dir / "server.properties"),
        ],
    )
    try:
        fmt = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BrokerUnavailable("formatting the KRaft storage did not finish within 120 s") from None
    if fmt.returncode != 0:
        raise BrokerUnavailable(
            f"formatting the KRaft storage in {state_dir / 'data'} failed "
            f"(exit {fmt.returncode}; is `java` 17 or newer?)",
            (fmt.stdout + fmt.stderr)[-3000:],
        )
    handle = BrokerHandle(f"127.0.0.1:{port}", "jars", state_dir, port, controller_port)
    handle._launch(timeout_s)
    return handle


def _start_container(state_dir: Path | None) -> BrokerHandle:
    from testcontainers.kafka import KafkaContainer

    container = KafkaContainer()
    with contextlib.suppress(AttributeError):
        container = container.with_kraft()
    container.start()
    wrapped = container.get_wrapped_container()
    handle = BrokerHandle(
        container.get_bootstrap_server(),
        "testcontainers",
        Path(state_dir).resolve() if state_dir else None,
        container_id=getattr(wrapped, "id", None),
        _container=container,
    )
    if handle.state_dir is not None:
        handle.state_dir.mkdir(parents=True, exist_ok=True)
        handle._write_info()
    return handle


def _missing(docker_why: str | None) -> BrokerUnavailable:
    tools = [t for t in ("java", "mvn") if shutil.which(t) is None]
    docker = (
        f"no Docker engine answers ({docker_why})"
        if docker_why
        else "a Docker engine answers but the testcontainers package is not installed"
    )
    return BrokerUnavailable(
        f"cannot start a Kafka broker: KAFKA_BOOTSTRAP_SERVERS is not set; {docker}; java and mvn are not both "
        f"on PATH (missing: {', '.join(tools) or 'none'}). Install a JDK 17+ and Maven 3 (the Kafka jars are "
        "fetched from Maven Central once), or start Docker and `pip install testcontainers`, or set "
        "KAFKA_BOOTSTRAP_SERVERS=host:port to use a running broker."
    )


def start_broker(
    state_dir: Path | None = None, *, create_topics: bool = True, timeout_s: float = 90, create: bool | None = None
) -> BrokerHandle:
    """A broker to talk to, started if need be, with the wattmeter topics created
    (``create_topics=False`` skips that; ``create`` is its older name).

    ``state_dir`` (default ``.wattmeter/kafka``) holds the jar broker's data, config,
    log and ``broker.json``; a broker still running from it is stopped first.
    """
    if create is not None:
        create_topics = create
    mode = os.environ.get("WATTMETER_KAFKA_MODE", "").strip().lower() or "auto"
    if mode not in ("auto", *MODES):
        raise BrokerUnavailable(f"WATTMETER_KAFKA_MODE={mode!r} is not one of auto, {', '.join(MODES)}")
    state = Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    handle: BrokerHandle | None = None
    if mode == "external" or (mode == "auto" and external):
        if not external:
            raise BrokerUnavailable("WATTMETER_KAFKA_MODE=external but KAFKA_BOOTSTRAP_SERVERS is not set")
        if not _wait_answers(external, min(timeout_s, 15)):
            raise BrokerUnavailable(
                f"KAFKA_BOOTSTRAP_SERVERS={external} does not answer a Kafka metadata request "
                "(unset it to start a local broker instead)"
            )
        handle = BrokerHandle(external, "external")
    docker_why: str | None = "not tried"
    if handle is None and mode in ("auto", "testcontainers"):
        docker_why = _docker_status()
        if docker_why is None and _importable("testcontainers.kafka"):
            try:
                handle = _start_container(state_dir)
            except Exception as exc:  # noqa: BLE001 - an image pull or engine failure: fall back to the jars
                if mode == "testcontainers" or not _jars_usable():
                    raise BrokerUnavailable(f"the testcontainers Kafka container did not start: {exc!r}") from None
                print(f"kafka_broker: the Kafka container did not start ({exc!r}); using the jars", file=sys.stderr)
        elif mode == "testcontainers":
            why = docker_why or "the testcontainers package is not installed"
            raise BrokerUnavailable(f"WATTMETER_KAFKA_MODE=testcontainers but {why}")
    if handle is None:
        if _jars_usable():
            handle = start_jar_broker(state, timeout_s)
        elif mode == "jars":
            raise BrokerUnavailable("WATTMETER_KAFKA_MODE=jars but java and mvn are not both on PATH")
        else:
            raise _missing(docker_why)
    if create_topics:
        try:
            _create_topics(handle.bootstrap)
        except BaseException:
            if handle.mode != "external":
                handle.stop()
            raise
    return handle


def _jars_usable() -> bool:
    return shutil.which("java") is not None and (shutil.which("mvn") is not None or jars_cached())


def _wait_answers(bootstrap: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not broker_answers(bootstrap, 3):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@contextlib.contextmanager
def running_broker(
    state_dir: Path | None = None, *, create_topics: bool = True, timeout_s: float = 90
) -> Iterator[BrokerHandle]:
    """``with running_broker(tmp) as broker:`` a started broker, stopped at the end."""
    handle = start_broker(state_dir, create_topics=create_topics, timeout_s=timeout_s)
    try:
        yield handle
    finally:
        handle.stop()


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.kafka_broker",
        description="Start or stop wattmeter's local single-node Kafka broker (KRaft).",
    )
    parser.add_argument("command", choices=["start", "stop", "status", "run"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"data, config, log and broker.json (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for the broker (default 90)")
    parser.add_argument("--no-topics", action="store_true", help="do not create the wattmeter topics")
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    try:
        if args.command == "status":
            return _status(state_dir)
        if args.command == "stop":
            with _file_lock(state_dir / ".lock"):
                handle = load_handle(state_dir)
                if handle is None:
                    (state_dir / "broker.json").unlink(missing_ok=True)
                    print("not running")
                    return 0
                handle.stop()
            print(f"stopped the broker at {handle.bootstrap}")
            return 0
        if args.command == "start":
            # a detached container must outlive this process: no testcontainers reaper
            os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
            with _file_lock(state_dir / ".lock"):
                handle = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else load_handle(state_dir)
                if handle is not None:
                    if not args.no_topics:
                        create_topics(handle.bootstrap)
                else:
                    handle = start_broker(state_dir, create_topics=not args.no_topics, timeout_s=args.timeout)
            print(
                f"Kafka broker ({handle.mode}) at {handle.bootstrap}"
                + (f", pid {handle.pid}, log {handle.log_path}" if handle.mode == "jars" else ""),
                file=sys.stderr,
            )
            print(handle.bootstrap, flush=True)
            return 0
        return _run(state_dir, args)
    except BrokerUnavailable as exc:
        print(f"kafka_broker: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _status(state_dir: Path) -> int:
    handle = load_handle(state_dir)
    if handle is None:
        print("not running")
        return 1
    state = "answering" if broker_answers(handle.bootstrap, 3) else "not answering"
    print(
        f"running ({handle.mode}, {state}) at {handle.bootstrap}"
        + (f", pid {handle.pid}, ports {handle.port}/{handle.controller_port}" if handle.mode == "jars" else "")
    )
    return 0


def _run(state_dir: Path, args: argparse.Namespace) -> int:
    running = load_handle(state_dir)
    if running is not None:
        raise BrokerUnavailable(
            f"a broker from {state_dir} is already running at {running.bootstrap} "
            f"(pid {running.pid}); `stop` it first or use another --state-dir"
        )
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    handle = start_broker(state_dir, create_topics=not args.no_topics, timeout_s=args.timeout)
    print(f"Kafka broker ({handle.mode}) at {handle.bootstrap}; Ctrl-C stops it", file=sys.stderr)
    print(handle.bootstrap, flush=True)
    code = 0
    try:
        while not stopping:
            if not handle.alive():
                print(f"kafka_broker: the broker exited; see {handle.log_path}", file=sys.stderr)
                code = 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
