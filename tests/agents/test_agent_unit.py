"""The node agent without Kafka: simulated NVML behaviour, clock steps, spool bounds, config."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agents.backends.simulated import SimulatedBackend
from agents.clock import SimulatedClock
from agents.config import ConfigError, load_config
from agents.sampler import Sampler
from agents.spool import Spool
from streams.leases import LeaseIndex
from streams.rollup import NodeRollup, RollupConfig, new_state
from tests.support.helpers import T0


def sampler_for(backend: SimulatedBackend, node: str = "n1") -> tuple[Sampler, SimulatedClock]:
    clock = SimulatedClock(T0)
    return Sampler(backend, clock, node, 1000, boot_id="b"), clock


def take(sampler: Sampler, clock: SimulatedClock, n: int) -> list:
    out = []
    for _ in range(n):
        out.append(sampler.tick())
        clock.sleep_until_mono(clock.mono_ms() + 1000)
    return out


def test_counter_reset_is_flagged_and_never_yields_negative_energy():
    backend = SimulatedBackend(gpus=1, node_id="n1", constant_util=100)
    sampler, clock = sampler_for(backend)
    samples = take(sampler, clock, 5)
    backend.reload_driver(0)
    samples += take(sampler, clock, 5)
    energies = [s.gpus[0].energy_mj for s in samples]
    assert energies[4] > energies[5] and samples[5].gpus[0].counter_reset
    assert not any(s.gpus[0].counter_reset for s in samples[6:])
    rollup = NodeRollup(RollupConfig(lateness_ms=0), LeaseIndex())
    state = new_state("n1")
    records = [r for i, s in enumerate(samples) for r in rollup.apply(state, s, i).records] + rollup.flush(state)
    # 9 intervals of 1 s at 700 W; the one across the reset is power x time, so still exact here
    assert sum(r.energy_mj for r in records) == 9 * 700_000


def test_gpu_error_then_recovery_leaves_other_gpus_alone_and_loses_no_energy():
    backend = SimulatedBackend(gpus=2, node_id="n1", constant_util=50)
    sampler, clock = sampler_for(backend)
    samples = take(sampler, clock, 3)
    backend.inject_error(0, reads=3)
    samples += take(sampler, clock, 7)
    errors = [s.gpus[0].error for s in samples]
    assert errors[3:6] == ["NVML_ERROR_GPU_IS_LOST"] * 3 and errors[6] is None
    assert all(s.gpus[1].error is None for s in samples)
    rollup = NodeRollup(RollupConfig(lateness_ms=0), LeaseIndex())
    state = new_state("n1")
    records = [r for i, s in enumerate(samples) for r in rollup.apply(state, s, i).records] + rollup.flush(state)
    per_gpu = {u: sum(r.energy_mj for r in records if r.gpu_uuid == u) for u in backend.uuids}
    assert per_gpu[backend.uuids[0]] == per_gpu[backend.uuids[1]] == 9 * 385_000  # counter covered the outage


def test_mig_instances_report_their_own_uuid_parent_and_no_utilization():
    backend = SimulatedBackend(gpus=2, node_id="n1", constant_util=50, mig_per_gpu=3)
    reading = backend.read(T0)
    assert len(reading) == 6
    assert {r.parent_uuid for r in reading} == set(backend.uuids)
    assert all(r.gpu_uuid.startswith("MIG-") and r.util_gpu_pct is None for r in reading)
    assert all("MIG 1/3" in r.model for r in reading)


def test_clock_step_is_visible_and_does_not_shift_the_schedule():
    backend = SimulatedBackend(gpus=1, node_id="n1", constant_util=50)
    sampler, clock = sampler_for(backend)
    before = take(sampler, clock, 3)
    clock.step_wall(-3_600_000)  # NTP steps the wall clock back an hour
    after = take(sampler, clock, 3)
    assert sampler.clock_steps == 1
    assert after[0].ts_ms - before[-1].ts_ms == 1000 - 3_600_000
    assert after[0].mono_ms - before[-1].mono_ms == 1000  # the monotonic schedule goes on


def test_spool_survives_reopen_and_acks_in_order(tmp_path: Path):
    spool = Spool(tmp_path / "s.sqlite3")
    spool.append_many([(b"k", f"v{i}".encode(), T0 + i) for i in range(10)])
    first = spool.peek(4)
    spool.ack(first[-1].row_id)
    spool.close()
    reopened = Spool(tmp_path / "s.sqlite3")
    assert reopened.pending_rows == 6 and reopened.has_rows.is_set()
    assert [r.value for r in reopened.peek(100)] == [f"v{i}".encode() for i in range(4, 10)]
    assert sqlite3.connect(tmp_path / "s.sqlite3").execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_spool_bounds_drop_oldest_with_a_log_line(tmp_path: Path, caplog):
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=10_000, max_age_ms=60_000)
    for i in range(30):
        spool.append(b"k", b"x" * 999, T0 + i)  # 1,000 bytes each
    assert spool.pending_bytes <= 10_000 and spool.dropped > 0
    assert "DROPPED" in caplog.text
    kept = spool.peek(100)
    assert kept[-1].row_id == 30 and [r.row_id for r in kept] == sorted(r.row_id for r in kept)
    spool.append(b"k", b"late", T0 + 120_000)  # a minute later, everything older is over age
    assert [r.value for r in spool.peek(100)] == [b"late"]


def test_config_layers_and_errors(tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text(
        'node_id = "from-file"\ninterval_ms = 500\n[kafka]\nbootstrap_servers = "k:9092"\n'
        'security_protocol = "SASL_SSL"\n'
    )
    config = load_config(path, {"interval_ms": 250}, environ={"WATTMETER_NODE_ID": "from-env"})
    assert (config.node_id, config.interval_ms, config.bootstrap) == ("from-env", 250, "k:9092")
    assert config.kafka["security_protocol"] == "SASL_SSL"
    path.write_text("surprise = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'surprise'"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="needs a trace"):
        load_config(None, {"backend": "replay"}, environ={})


def test_daemon_spools_every_tick_and_serves_prometheus_metrics(tmp_path: Path):
    import json
    import socket
    import urllib.request

    from agents.config import AgentConfig
    from agents.daemon import AgentDaemon

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"GPU-sim-m-00": "tenant-x"}))
    config = AgentConfig(node_id="m", gpus=2, spool_dir=tmp_path / "spool", metrics_port=port, hints_file=hints)
    backend = SimulatedBackend(gpus=2, node_id="m")
    backend.inject_error(1, reads=2)
    daemon = AgentDaemon(config, backend=backend, clock=SimulatedClock(T0))
    assert daemon.run(ticks=5) == 5  # no Kafka configured: everything stays spooled
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "wattmeter_agent_samples_taken_total 5.0" in text
    assert 'wattmeter_agent_nvml_errors_total{gpu_uuid="GPU-sim-m-01"} 2.0' in text
    assert "wattmeter_agent_spool_rows 5.0" in text
    spooled = Spool(tmp_path / "spool" / "spool.sqlite3").peek(10)
    first = json.loads(spooled[0].value)
    assert [s["seq"] for s in map(json.loads, (r.value for r in spooled))] == [0, 1, 2, 3, 4]
    assert first["gpus"][0]["hint"] == "tenant-x" and first["gpus"][1]["hint"] is None


def test_simulated_counter_survives_a_restart_and_resets_only_when_asked(tmp_path: Path) -> None:
    """Like NVML's, the counter runs from "driver load": a new agent (a new backend on the same
    state file) reads on from where the last one was, plus what the GPU drew while none ran."""
    state = tmp_path / "simulated-gpus.json"
    first = SimulatedBackend(gpus=2, node_id="n1", constant_util=50, state_path=state)
    assert all(r.counter_reset for r in first.read(T0))  # a first start is a driver load
    before = first.read(T0 + 10_000)  # 10 s at 385 W
    assert [r.energy_mj for r in before] == [3_850_000, 3_850_000] and not any(r.counter_reset for r in before)
    again = SimulatedBackend(gpus=2, node_id="n1", constant_util=50, state_path=state)  # the agent restarted
    after = again.read(T0 + 15_000)  # 5 s later; the GPUs kept drawing 385 W meanwhile
    assert [r.energy_mj for r in after] == [5_775_000, 5_775_000] and not any(r.counter_reset for r in after)
    again.reload_driver(1)
    flagged = again.read(T0 + 16_000)
    assert [(r.energy_mj, r.counter_reset) for r in flagged] == [(6_160_000, False), (385_000, True)]
    # killed after taking the flagged reading, perhaps before spooling it: the next agent flags again
    third = SimulatedBackend(gpus=2, node_id="n1", constant_util=50, state_path=state)
    assert [(r.energy_mj, r.counter_reset) for r in third.read(T0 + 17_000)] == [(6_545_000, False), (770_000, True)]
    assert not any(r.counter_reset for r in third.read(T0 + 18_000))
    fourth = SimulatedBackend(gpus=2, node_id="n1", constant_util=50, state_path=state)
    assert not any(r.counter_reset for r in fourth.read(T0 + 19_000))


def test_simulated_counter_restarts_flagged_after_a_host_reboot_or_a_lost_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.backends import simulated

    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    monkeypatch.setattr(simulated, "HOST_BOOT_ID", boot_id)
    state = tmp_path / "simulated-gpus.json"
    backend = SimulatedBackend(gpus=1, node_id="n1", constant_util=100, state_path=state)
    backend.read(T0)
    assert backend.read(T0 + 1000)[0].energy_mj == 700_000
    boot_id.write_text("boot-2\n")  # the host rebooted: so did the driver
    rebooted = SimulatedBackend(gpus=1, node_id="n1", constant_util=100, state_path=state)
    assert [(r.energy_mj, r.counter_reset) for r in rebooted.read(T0 + 60_000)] == [(0, True)]
    state.write_text("{not json")
    garbled = SimulatedBackend(gpus=1, node_id="n1", constant_util=100, state_path=state)
    assert [(r.energy_mj, r.counter_reset) for r in garbled.read(T0 + 61_000)] == [(0, True)]


def test_simulated_load_resumes_its_phase_after_a_restart(tmp_path: Path) -> None:
    """A restart changes nothing the GPU does: the same seeded load, read for read."""
    reads = [T0 + i * 7_000 for i in range(300)]  # 35 minutes: many busy and idle phases
    straight = SimulatedBackend(gpus=2, node_id="n1", seed=3)
    expected = [[(r.energy_mj, r.power_mw, r.util_gpu_pct) for r in straight.read(ts)] for ts in reads]
    state = tmp_path / "simulated-gpus.json"
    got = []
    for part in (reads[:100], reads[100:101], reads[101:]):
        backend = SimulatedBackend(gpus=2, node_id="n1", seed=3, state_path=state)
        got += [[(r.energy_mj, r.power_mw, r.util_gpu_pct) for r in backend.read(ts)] for ts in part]
    assert got == expected
    assert len({u for sample in expected for _, _, u in sample}) > 4  # the load did vary


def test_rollup_meters_an_agent_restart_from_the_counter_and_rejects_nothing(tmp_path: Path) -> None:
    """The worker keeps one cursor per GPU across boots: the new boot's first sample closes the
    interval since the old boot's last one, from the counter, since the counter went on."""
    from streams import deltas

    state = tmp_path / "simulated-gpus.json"
    samples = []
    for boot, start in (("boot-a", T0), ("boot-b", T0 + 12_000)):  # 3 s down between the boots
        backend = SimulatedBackend(gpus=1, node_id="n1", seed=5, state_path=state)
        clock = SimulatedClock(start)
        sampler = Sampler(backend, clock, "n1", 1000, boot_id=boot)
        samples += take(sampler, clock, 10)
    rollup = NodeRollup(RollupConfig(lateness_ms=0), LeaseIndex())
    rollup_state = new_state("n1")
    outcomes = [rollup.apply(rollup_state, s, i) for i, s in enumerate(samples)]
    assert not any(o.rejected or o.late_gpus or o.duplicate for o in outcomes)
    records = [r for o in outcomes for r in o.records] + rollup.flush(rollup_state)
    energies = [s.gpus[0].energy_mj for s in samples]
    assert sum(r.energy_mj for r in records) == energies[-1] - energies[0]  # every interval from the counter
    assert sum(r.allocated_gpu_ms for r in records) == samples[-1].ts_ms - samples[0].ts_ms
    last_a, first_b = samples[9], samples[10]
    prev = deltas.Cursor(last_a.ts_ms, last_a.gpus[0].energy_mj, last_a.gpus[0].power_mw)
    _, interval = deltas.step(prev, first_b.ts_ms, first_b.gpus[0], 30_000)
    assert interval is not None and interval.from_counter and interval.energy_mj > 0
