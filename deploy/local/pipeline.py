"""Run the wattmeter services as child processes against one broker (demo, tests, bench).

The services are started through their console entry points (`python -m streams.cli`)
exactly as an operator would run them, each in its own process group so that they can
be stopped cleanly (SIGTERM) or killed (SIGKILL) in fault tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


class ServiceProcess:
    """One running service, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then SIGKILL if it has not exited within the timeout."""
        if self.running():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        if self.running():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def service_env(bootstrap: str, app_id: str, usage_dir: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for the streams services of one isolated pipeline (own group ids, own folders)."""
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "WATTMETER_STREAMS_APP_ID": app_id,
            "WATTMETER_SINK_GROUP": f"{app_id}-parquet-sink",
            "WATTMETER_USAGE_DIR": str(usage_dir),
            "WATTMETER_STREAMS_DATA": str(data_dir),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log_path: Path, *flags: str) -> ServiceProcess:
    return ServiceProcess("worker", ["-m", "streams.cli", "worker", *flags], env, log_path)


def start_sink(env: dict[str, str], log_path: Path) -> ServiceProcess:
    return ServiceProcess("sink", ["-m", "streams.cli", "sink"], env, log_path)


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    services: tuple[ServiceProcess, ...] = (),
    poll_s: float = 0.5,
) -> None:
    """Wait until `condition()`; fail fast, with the services' logs, if one dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        for service in services:
            if not service.running():
                raise RuntimeError(
                    f"{service.name} exited with {service.process.returncode} while waiting for "
                    f"{what}:\n{service.log_tail()}"
                )
        time.sleep(poll_s)
    logs = "\n".join(f"--- {s.name} ---\n{s.log_tail()}" for s in services)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs}")
