"""Agent configuration: defaults < TOML file < WATTMETER_* environment < command line."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from schemas.units import S_PER_DAY

if sys.version_info >= (3, 11):
    import tomllib
else:  # the agent runs on 3.10 too (requires-python)
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the setting."""


@dataclass
class AgentConfig:
    node_id: str = field(default_factory=socket.gethostname)
    backend: str = "simulated"  # nvml | simulated | replay
    interval_ms: int = 1000
    spool_dir: Path = Path(".wattmeter/agent-spool")
    spool_max_bytes: int = 512 * 1024**2
    spool_max_age_s: int = 7 * S_PER_DAY
    metrics_port: int = 0  # 0: no metrics server
    hints_file: Path | None = None  # JSON {gpu_uuid: hint}, e.g. written by the rental system
    # simulated backend
    gpus: int = 8
    model: str = "H100"
    seed: int = 0
    mig_per_gpu: int = 0
    # replay backend
    trace: Path | None = None
    speed: float = 1.0
    trace_tz: str | None = None  # zone of the trace's timestamps without one: IANA name or offset (+05:30); UTC
    trace_gpu_uuid: str | None = None  # the GPU of a single-GPU trace without GPU ids
    trace_gpus_per_sweep: int | None = None  # a trace without GPU ids: GPUs by row position in each sweep
    # kafka: bootstrap_servers plus any kafka-python producer setting (TLS, SASL) passed through
    kafka: dict[str, Any] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str | None:
        return self.kafka.get("bootstrap_servers")


_ENV_KEYS = {
    "node_id": "WATTMETER_NODE_ID",
    "backend": "WATTMETER_BACKEND",
    "interval_ms": "WATTMETER_INTERVAL_MS",
    "spool_dir": "WATTMETER_SPOOL_DIR",
    "metrics_port": "WATTMETER_METRICS_PORT",
    "hints_file": "WATTMETER_HINTS_FILE",
    "trace_tz": "WATTMETER_TRACE_TZ",
    "trace_gpu_uuid": "WATTMETER_TRACE_GPU_UUID",
    "trace_gpus_per_sweep": "WATTMETER_TRACE_GPUS_PER_SWEEP",
}
_KAFKA_ENV = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_plain_username": "KAFKA_SASL_USERNAME",
    "sasl_plain_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
}


def _coerce(config: AgentConfig, name: str, value: Any) -> Any:
    kind = type(getattr(AgentConfig(), name))
    if name in ("spool_dir", "hints_file", "trace"):
        return Path(value) if value not in (None, "") else None
    if name in ("trace_tz", "trace_gpu_uuid"):
        return (str(value).strip() or None) if value is not None else None
    try:
        if name == "trace_gpus_per_sweep":
            return None if value in (None, "") else int(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    return value


def load_config(
    path: Path | None = None, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> AgentConfig:
    environ = dict(os.environ if environ is None else environ)
    config = AgentConfig()
    known = {f.name for f in fields(AgentConfig)}
    layers: list[dict[str, Any]] = []
    if path is not None:
        try:
            layers.append(tomllib.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    layers.append({name: environ[var] for name, var in _ENV_KEYS.items() if environ.get(var)})
    layers.append({"kafka": {k: environ[v] for k, v in _KAFKA_ENV.items() if environ.get(v)}})
    layers.append({k: v for k, v in (overrides or {}).items() if v is not None})
    for layer in layers:
        for name, value in layer.items():
            if name == "kafka":
                if not isinstance(value, dict):
                    raise ConfigError("[kafka] must be a table of producer settings")
                config.kafka.update(value)
            elif name not in known:
                raise ConfigError(f"unknown setting {name!r}; known: {', '.join(sorted(known))}")
            else:
                setattr(config, name, _coerce(config, name, value))
    if config.backend not in ("nvml", "simulated", "replay"):
        raise ConfigError(f"backend must be nvml, simulated or replay, not {config.backend!r}")
    if config.interval_ms < 10:
        raise ConfigError("interval_ms must be at least 10")
    if config.backend == "replay" and config.trace is None:
        raise ConfigError("the replay backend needs a trace: --trace FILE")
    if config.trace_gpus_per_sweep is not None and config.trace_gpus_per_sweep < 1:
        raise ConfigError(f"trace_gpus_per_sweep must be at least 1, not {config.trace_gpus_per_sweep}")
    if not config.speed >= 0:
        raise ConfigError(f"speed must be >= 0 (0: as fast as possible), not {config.speed}")
    if config.trace_tz:
        from agents.backends.replay import parse_tz

        try:
            parse_tz(config.trace_tz)
        except ValueError as exc:
            raise ConfigError(f"trace_tz: {exc}") from None
    return config
