"""The operator's files: systemd unit, example config, Kubernetes manifests."""

from __future__ import annotations

import configparser
from pathlib import Path

import yaml

from agents.config import load_config
from schemas.topics import GPU_SAMPLES, TOPIC_SPECS

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


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
