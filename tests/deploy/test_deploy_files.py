"""The operator's files: systemd units, example config and environment, Kubernetes manifests."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents.config import load_config
from schemas.topics import GPU_SAMPLES, TOPIC_SPECS
from streams.logs import log_options, parse_bootstrap
from streams.settings import StreamsSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SYSTEMD = DEPLOY / "systemd"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
}


def read_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(SYSTEMD / name)
    return unit


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of a systemd EnvironmentFile (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_systemd_unit_restarts_always_and_is_hardened():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(DEPLOY / "systemd" / "wattmeter-agent.service")
    service = unit["Service"]
    assert service["Restart"] == "always" and service["KillSignal"] == "SIGTERM"
    assert "--config /etc/wattmeter/agent.toml" in service["ExecStart"]
    for option in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert option in service
    assert service["ReadWritePaths"] == "/var/lib/wattmeter"


@pytest.mark.parametrize("name, command", [("wattmeter-worker.service", "worker"), ("wattmeter-sink.service", "sink")])
def test_streams_units_restart_are_bounded_and_hardened(name, command):
    unit = read_unit(name)
    service = unit["Service"]
    assert service["ExecStart"] == f"/opt/wattmeter/bin/wattmeter-streams {command}"
    assert service["Restart"] in ("always", "on-failure") and float(service["RestartSec"]) > 0
    assert service["RestartPreventExitStatus"] == "2"  # a setting that cannot work: no restart loop
    assert int(unit["Unit"]["StartLimitBurst"]) >= 3 and int(unit["Unit"]["StartLimitIntervalSec"]) > 0
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 30
    assert service["EnvironmentFile"] == "/etc/wattmeter/streams.env"
    assert service["User"] == "wattmeter" and "network-online.target" in unit["Unit"]["After"]
    for option, value in HARDENING.items():
        assert service[option] == value, option
    # the only writable place is the unit's own state directory, where its data goes
    state = f"/var/lib/{service['StateDirectory']}"
    assert service["ReadWritePaths"] == state and service["WorkingDirectory"] == state
    data_setting = {"worker": "WATTMETER_STREAMS_DATA", "sink": "WATTMETER_USAGE_DIR"}[command]
    assert service["Environment"] == f"{data_setting}={state}"
    assert service["PrivateDevices"] == "yes"  # no GPU needed off the GPU hosts
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_units_pass_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` where systemd is installed (the units as they are, with
    ExecStart pointed at this checkout's console scripts); the parse tests above otherwise."""
    analyze = shutil.which("systemd-analyze")
    names = ["wattmeter-agent.service", "wattmeter-worker.service", "wattmeter-sink.service"]
    for name in names:
        text = (SYSTEMD / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/wattmeter/bin/", str(Path(sys.executable).parent) + "/"))
    if analyze is None:
        for name in names:
            assert read_unit(name)["Service"]["ExecStart"]
        return
    done = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / n) for n in names)], capture_output=True, text=True
    )
    assert done.returncode == 0 and "wattmeter" not in done.stderr, done.stderr


def test_streams_env_example_is_every_setting_the_services_take(monkeypatch):
    values = env_file(SYSTEMD / "streams.env.example")
    parse_bootstrap(values["KAFKA_BOOTSTRAP_SERVERS"])
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = StreamsSettings()
    settings.rollup_config()  # windows, lateness, valley hours: all valid
    assert settings.bootstrap == values["KAFKA_BOOTSTRAP_SERVERS"]
    assert (settings.window_ms, settings.sink_batch_records) == (60000, 50000)
    assert log_options(values) == ("text", 20)  # the log format and level are known
    documented = (DEPLOY.parent / "README.md").read_text()
    assert [key for key in values if f"`{key}`" not in documented] == []


def test_example_config_loads():
    config = load_config(DEPLOY / "systemd" / "agent.toml.example", environ={})
    assert config.backend == "nvml" and config.kafka["security_protocol"] == "SASL_SSL"
    assert config.spool_dir == Path("/var/lib/wattmeter")


def test_manifests_parse_and_workers_fit_the_partitions():
    daemonset = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "agent-daemonset.yaml").read_text()) if d]
    kinds = {d["kind"] for d in daemonset}
    assert kinds == {"ConfigMap", "DaemonSet"}
    pod = next(d for d in daemonset if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "WATTMETER_NODE_ID" in env
    streams = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "streams-deployment.yaml").read_text()) if d]
    worker = next(d for d in streams if d["metadata"]["name"] == "wattmeter-streams-worker")
    partitions = next(s.partitions for s in TOPIC_SPECS if s.name == GPU_SAMPLES)
    assert worker["spec"]["replicas"] <= partitions


@pytest.mark.parametrize(
    "name, command",
    [("wattmeter-webhooks.service", "webhooks deliver --follow"), ("wattmeter-rollup.service", "rollup --follow")],
)
def test_the_billing_services_follow_and_are_hardened(name, command):
    unit = read_unit(name)
    service = unit["Service"]
    assert service["ExecStart"].startswith(f"/opt/wattmeter/bin/wattmeter-billing {command}")
    assert service["Restart"] == "always" and service["RestartPreventExitStatus"] == "2"
    assert service["EnvironmentFile"] == "/etc/wattmeter/billing.env"
    for option, value in HARDENING.items():
        assert service[option] == value, option
    env = env_file(DEPLOY / "systemd" / "billing.env.example")
    assert {"WATTMETER_BILLING_DB", "KAFKA_BOOTSTRAP_SERVERS"} <= set(env)


def test_the_billing_services_manifest_runs_both_followers():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "billing-services.yaml").read_text()) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    args = {name: d["spec"]["template"]["spec"]["containers"][0]["args"] for name, d in deployments.items()}
    assert args["wattmeter-rollup-follow"][:2] == ["rollup", "--follow"]
    assert args["wattmeter-webhooks"] == ["webhooks", "deliver", "--follow"]
    for deployment in deployments.values():
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
