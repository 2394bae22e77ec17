"""The thin slice on real parts: a hand-computable load through the real broker, the
real Faust worker and the Parquet sink, priced by billing, read back by DuckDB."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from billing.cli import main as billing_main
from deploy.local.demo import demo_start_ms, windows_written
from deploy.local.demo import main as demo_main
from deploy.local.fleet import FleetPlan, publish_leases, publish_samples
from deploy.local.pipeline import service_env, start_sink, start_worker, wait_for
from schemas.leases import Lease
from tests.support.helpers import T0

pytestmark = pytest.mark.broker

EXACT_CARD = """
name = "exact"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "USD"
pue = "1"
increment_ms = 1
minimum_s = 0
[calendar]
timezone = "UTC"
[gpu_hour."*".on_demand]
"*" = "90.00"
[energy_kwh]
"*" = "30.00"
[tax]
"*" = "0"
"""


def billed(db: str, usage_dir: Path, period: str, tenants: list[str], capsys, card: str = EXACT_CARD) -> dict:
    """Put `tenants` on `card`, run the period with `wattmeter-billing`, and return each tenant's
    invoice as `invoices show --json` prints it."""
    card_file = usage_dir.parent / "card.toml"
    card_file.write_text(card)
    common = ["--db", db, "--usage-dir", str(usage_dir), "--json"]
    assert billing_main(["ratecards", "load", str(card_file), *common]) == 0
    for tenant in tenants:
        assert (
            billing_main(
                ["contracts", "add", "--tenant", tenant, "--rate-card", "exact", "--from", "2026-01-01", *common]
            )
            == 0
        )
    capsys.readouterr()
    assert billing_main(["run", "--period", period, *(a for t in tenants for a in ("--tenant", t)), *common]) == 0
    run = json.loads(capsys.readouterr().out)
    invoices = {}
    for row in run["tenants"]:
        assert billing_main(["invoices", "show", str(row["invoice_id"]), *common]) == 0
        invoices[row["tenant_id"]] = json.loads(capsys.readouterr().out)
    return invoices


def gpu_ms_and_mj(invoice: dict) -> tuple[int, int]:
    lines = invoice["lines"]
    return (
        sum(int(line["quantity_base"]) for line in lines if line["kind"] == "gpu_time"),
        sum(int(line["quantity_base"]) for line in lines if line["kind"] == "energy"),
    )


def test_known_load_gives_exact_gpu_ms_energy_and_invoice(kafka_broker, run_id, tmp_path, capsys):
    """2 H100s pinned at 50 % draw exactly 385 W. GPU 0 is leased to tenant A from 30 s to
    90 s, GPU 1 to tenant B from 0 on; the bill covers [0 s, 180 s).

    A: 60 s  -> 60,000 GPU-ms, 60 x 385,000 = 23,100,000 mJ
    B: 180 s -> 180,000 GPU-ms, 69,300,000 mJ
    at 90.00 per GPU-hour and 30.00 per kWh (no minimum, no tax), billed for November 2026:
    A: 0.01666.. h x 90 = 1.50; 0.0064166.. kWh x 30 = 0.1925 -> 0.19 (half even); total 1.69
    B: 0.05 h x 90 = 4.50; 0.01925 kWh x 30 = 0.5775 -> 0.58; total 5.08
    """
    node = f"it-{run_id}"
    plan = FleetPlan(nodes=[node], gpus_per_node=2, start_ms=T0, ticks=190, util=50)
    gpu0, gpu1 = plan.gpu_uuids()
    tenant_a, tenant_b = f"a-{run_id}", f"b-{run_id}"
    db = f"sqlite:///{tmp_path}/billing.db"
    publish_leases(
        kafka_broker.bootstrap,
        [
            Lease(f"la-{run_id}", tenant_a, gpu0, T0 + 30_000, T0 + 90_000),
            Lease(f"lb-{run_id}", tenant_b, gpu1, T0, None),
        ],
        db,
    )
    assert publish_samples(kafka_broker.bootstrap, plan) == 190
    usage_dir = tmp_path / "usage"
    env = service_env(
        kafka_broker.bootstrap,
        f"it-{run_id}",
        usage_dir,
        tmp_path / "state",
        WATTMETER_CHECK_FUTURE="0",
        WATTMETER_SINK_SECONDS="1",
    )
    services = (start_worker(env, tmp_path / "worker.log"), start_sink(env, tmp_path / "sink.log"))
    try:
        wait_for(
            lambda: windows_written(usage_dir, T0, T0 + 180_000, [gpu0, gpu1]) >= 6,
            120,
            "6 GPU-windows in Parquet",
            services,
        )
    finally:
        for service in services:
            service.stop()
    invoices = billed(db, usage_dir, "2026-11", [tenant_a, tenant_b], capsys)
    assert gpu_ms_and_mj(invoices[tenant_a]) == (60_000, 23_100_000)
    assert gpu_ms_and_mj(invoices[tenant_b]) == (180_000, 69_300_000)
    assert [line["amount"] for line in invoices[tenant_a]["lines"]] == ["1.50", "0.19", "0.00"]
    assert [line["amount"] for line in invoices[tenant_b]["lines"]] == ["4.50", "0.58", "0.00"]
    assert (Decimal(invoices[tenant_a]["total"]), Decimal(invoices[tenant_b]["total"])) == (
        Decimal("1.69"),
        Decimal("5.08"),
    )
    # idle time on GPU 0 outside the lease is recorded for the operator, not billed
    idle = duckdb.sql(
        f"select sum(allocated_gpu_ms) from read_parquet('{usage_dir}/date=*/*.parquet') "
        f"where kind = 'idle' and gpu_uuid = '{gpu0}' and window_start_ms < {T0 + 180_000}"
    ).fetchall()
    assert idle == [(120_000,)]


def test_demo_parquet_read_back_by_duckdb_matches_the_invoices(kafka_broker, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_broker.bootstrap)
    start = demo_start_ms()
    out = tmp_path / "demo"
    assert demo_main(["--out", str(out), "--minutes", "5", "--start-ms", str(start)]) == 0
    printed = capsys.readouterr().out
    assert "INVOICE WM-000001  tenant acme" in printed and "INVOICE WM-000003  tenant initech" in printed
    assert "nothing to do" in printed  # the second run
    usage = out / "usage"
    end = start + 5 * 60_000
    rows = duckdb.sql(
        f"select tenant_id, sum(allocated_gpu_ms), sum(energy_mj) from read_parquet('{usage}/date=*/*.parquet', "
        f"hive_partitioning=true) where kind = 'usage' and window_start_ms >= {start} "
        f"and window_start_ms < {end} and tenant_id in ('acme', 'globex', 'initech') group by 1 order by 1"
    ).fetchall()
    assert [r[0] for r in rows] == ["acme", "globex", "initech"]
    assert rows[0][1] == 3 * 5 * 60_000  # acme: 3 GPUs, all 5 minutes
    common = ["--db", f"sqlite:///{out}/billing.db", "--json"]
    for tenant, gpu_ms, mj in rows:
        assert billing_main(["invoices", "list", "--tenant", tenant, *common]) == 0
        (listed,) = json.loads(capsys.readouterr().out)
        assert listed["status"] == "finalized"
        assert billing_main(["invoices", "show", listed["number"], *common]) == 0
        assert gpu_ms_and_mj(json.loads(capsys.readouterr().out)) == (gpu_ms, mj)


def test_broker_launcher_fails_fast_and_clearly_without_java_docker_or_bootstrap(tmp_path: Path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(
        [sys.executable, "-m", "deploy.local.kafka_broker", "start", "--state-dir", str(tmp_path / "k")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS is not set" in result.stderr and "java and mvn" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_host_that_goes_silent_is_billed_and_its_late_samples_become_an_adjustment(
    kafka_broker, run_id, tmp_path, capsys
):
    from kafka import KafkaProducer

    from tests.support.helpers import simulated_samples

    node, tenant = f"silent-{run_id}", f"s-{run_id}"
    samples, backend = simulated_samples(node, gpus=1, ticks=100, util=50)
    gpu = backend.uuids[0]
    db = f"sqlite:///{tmp_path}/billing.db"
    publish_leases(kafka_broker.bootstrap, [Lease(f"ls-{run_id}", tenant, gpu, T0, None)], db)
    producer = KafkaProducer(bootstrap_servers=[kafka_broker.bootstrap], acks="all")

    def send(batch):
        for sample in batch:
            producer.send("gpu.samples", key=node.encode(), value=sample.to_json_bytes())
        producer.flush()

    usage_dir = tmp_path / "usage"
    env = service_env(
        kafka_broker.bootstrap,
        f"silent-{run_id}",
        usage_dir,
        tmp_path / "state",
        WATTMETER_CHECK_FUTURE="0",
        WATTMETER_SINK_SECONDS="0.5",
        WATTMETER_IDLE_CLOSE_MS="2000",
    )
    services = (start_worker(env, tmp_path / "worker.log"), start_sink(env, tmp_path / "sink.log"))

    def rows():
        files = [str(p) for p in usage_dir.glob("date=*/*.parquet")]
        if not files:
            return []
        return duckdb.sql(
            f"select kind, window_start_ms, allocated_gpu_ms, energy_mj from read_parquet({files}) "
            f"where gpu_uuid = '{gpu}' order by record_id"
        ).fetchall()

    try:
        send(samples[:30])  # 29 s of use, then the host falls silent mid-window
        wait_for(lambda: len(rows()) >= 1, 120, "the silent host's open window to be closed", services)
        assert rows() == [("usage", T0, 29_000, 29 * 385_000)]
        send(samples[30:])  # it comes back and its spool replays the rest
        wait_for(lambda: len(rows()) >= 2, 120, "the late samples' records", services)
    finally:
        for service in services:
            service.stop()
        producer.close()
    got = rows()
    assert ("adjustment", T0, 31_000, 31 * 385_000) in got  # the rest of the first minute, on top
    assert sum(r[2] for r in got if r[1] < T0 + 60_000) == 60_000  # the first minute: nothing lost, nothing twice
    invoice = billed(db, usage_dir, "2026-11", [tenant], capsys)[tenant]
    assert gpu_ms_and_mj(invoice)[0] == sum(r[2] for r in got)  # usage and adjustment, each once
