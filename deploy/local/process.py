"""One way to run a local real part (Kafka broker, PostgreSQL server) as a child process.

A real part is a small handle with ``start()``, ``stop()``, an ``address`` and a
``log_path`` (see ``RealPart``). Underneath, each runs one ``ChildProcess``: started in
its own process group with stdout and stderr appended to a log file, ready once a
caller-supplied probe answers (else ``StartupFailed`` with the log tail), stopped with
a signal to the group (SIGTERM unless told otherwise), then SIGKILL after a timeout.
Only the standard library is used here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar


class PartUnavailable(RuntimeError):
    """A real part could not be had. ``summary`` is one line saying why and what to do;
    ``str()`` adds the details (the tail of its log) when there are any."""

    def __init__(self, summary: str, detail: str = "", log_path: Path | None = None) -> None:
        self.summary = summary
        self.detail = detail
        self.log_path = log_path
        super().__init__(f"{summary}\n{detail}" if detail else summary)

    def one_line(self) -> str:
        """The summary on one line, with the telling line of the details and the log path."""
        text = " ".join(self.summary.split())
        lines = [ln.strip() for ln in self.detail.splitlines() if ln.strip() and not ln.startswith("===")]
        patterns = (r"^(Caused by: )?[\w.$]+(Exception|Error): ", r"Unrecognized|Error:", r"\b(ERROR|FATAL)\b")
        for pattern in patterns:
            telling = [ln for ln in lines if re.search(pattern, ln)]
            if telling:
                break
        else:
            telling = lines[-1:]
        if telling:
            text += f": {telling[0][:300]}"
        return text + (f" (log: {self.log_path})" if self.log_path else "")


class StartupFailed(PartUnavailable):
    """A child process exited, or did not answer its probe in time, while starting."""


class RealPart(Protocol):
    """What every local real part offers."""

    @property
    def address(self) -> str: ...

    @property
    def log_path(self) -> Path | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...


Part = TypeVar("Part", bound=RealPart)


def run_until_stopped(start: Callable[[], Part], name: str, line: Callable[[Part], str]) -> int:
    """A CLI's ``run``: start the part, print ``line(part)`` as the last line of stdout, wait
    for Ctrl-C or SIGTERM (0) or for the part to exit (1), then stop it."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    part = start()
    print(f"{name} at {part.address}; Ctrl-C stops it", file=sys.stderr)
    print(line(part), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while not stopping and part.alive():
            time.sleep(0.5)
    code = 0 if stopping or part.alive() else 1
    if code:
        print(f"{name} exited; see {part.log_path}", file=sys.stderr)
    part.stop()
    return code


@dataclass
class ChildProcess:
    """A child process in its own process group, its output appended to ``log_path``.

    ``user``/``group`` (uids) run it as another user, e.g. ``postgres`` when we are root.
    """

    name: str
    command: list[str]
    log_path: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    user: int | None = None
    group: int | None = None
    stop_signal: int = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(
        self,
        probe: Callable[[], bool] | None = None,
        timeout_s: float = 60,
        error: type[PartUnavailable] = StartupFailed,
    ) -> None:
        """Start it, then wait until ``probe()`` is true (when given). If the child exits
        or the probe is not true within ``timeout_s``, stop it and raise ``error`` with the
        tail of the log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shlex.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.cwd,
                env=self.env,
                user=self.user,
                group=self.group,
                extra_groups=[] if self.group is not None else None,
            )
        if probe is not None:
            self.wait_ready(probe, timeout_s, error)

    def wait_ready(
        self, probe: Callable[[], bool], timeout_s: float, error: type[PartUnavailable] = StartupFailed
    ) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            while not probe():
                code = self.process.poll() if self.process is not None else -1
                if code is not None:
                    raise error(f"{self.name} exited with status {code} while starting", self.log_tail(), self.log_path)
                if time.monotonic() > deadline:
                    raise error(f"{self.name} did not answer within {timeout_s:g} s", self.log_tail(), self.log_path)
                time.sleep(0.1)
        except BaseException:  # a failure, a timeout, Ctrl-C: leave nothing running behind
            self.stop()
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15) -> int | None:
        """``stop_signal`` to the process group, SIGKILL after ``timeout_s``; the exit status."""
        if self.process is None:
            return None
        if self.alive():
            stop_pid(self.process.pid, timeout_s, self.stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(10)
        return None

    def kill(self) -> None:
        if self.process is not None and self.alive():
            signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


def part_cli(
    argv: list[str] | None,
    prog: str,
    default_dir: Path,
    load: Callable[[Path], Part | None],
    start: Callable[[Path, argparse.Namespace], Part],
    show: Callable[[Part], str],
    describe: Callable[[Part], str],
    options: Callable[[argparse.ArgumentParser], None] = lambda _: None,
    dir_flag: str = "--dir",
) -> int:
    """The command line every real part has: ``start`` (detached; reuses a running part
    when ``start`` says so), ``stop``, ``status`` (exit 1: not running) and ``run``
    (foreground until Ctrl-C or SIGTERM). ``load`` finds the part running from the folder,
    ``show`` is the line printed last on stdout (its address or URL). A ``PartUnavailable``
    is one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(prog=f"python -m deploy.local.{prog}")
    parser.add_argument("command", choices=["start", "stop", "status", "run"])
    parser.add_argument(dir_flag, dest="dir", type=Path, default=default_dir, help=f"(default {default_dir})")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for it to answer (default 90)")
    options(parser)
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    try:
        if args.command == "start":
            with file_lock(folder / ".lock"):
                started = start(folder, args)
            print(f"{prog}: {describe(started)} at {started.address}, log {started.log_path}", file=sys.stderr)
            print(show(started), flush=True)
            return 0
        if args.command == "stop":
            with file_lock(folder / ".lock"):
                part = load(folder)
                if part is not None:
                    part.stop()
            print(f"stopped {part.address}" if part else "not running")
            return 0
        part = load(folder)
        if args.command == "status":
            print(f"running ({describe(part)}) at {show(part)}" if part else "not running")
            return 0 if part else 1
        if part is not None:
            raise PartUnavailable(f"{prog} is already running from {folder} at {part.address}: stop it first")
        return run_until_stopped(lambda: start(folder, args), prog, show)
    except PartUnavailable as exc:
        print(f"{prog}: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# --------------------------------------------------------------------------- by pid


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (or to ``pid`` alone)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def pid_running(pid: int, cmdline_contains: str | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process, and its command line has the given
    argument: a pid read from a state file may since belong to something else."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not proc.exists():  # no /proc (macOS): trust the signal check
        return True
    try:
        if (proc / "stat").read_text().rpartition(")")[2].split()[:1] in (["Z"], ["X"]):
            return False
        args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
    except OSError:
        return False
    return cmdline_contains is None or cmdline_contains in args


def stop_pid(pid: int, timeout_s: float = 15, sig: int = signal.SIGTERM) -> bool:
    """Signal a process group, SIGKILL it after ``timeout_s``; True once it is gone."""
    signal_group(pid, sig)
    if wait_until(lambda: not pid_running(pid), timeout_s):
        return True
    signal_group(pid, signal.SIGKILL)
    return wait_until(lambda: not pid_running(pid), 10)


# --------------------------------------------------------------------------- helpers


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} was not written)"
    return "\n".join(text[-lines:])


def can_bind(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A free 127.0.0.1 port, below the kernel's ephemeral range when there is room, so
    that no client connection can take it while the part is down for a restart."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(200 if low > 21000 else 0):
        port = random.randint(20000, low - 1)
        if port not in taken and can_bind(port):
            return port
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created) for the duration of the block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
