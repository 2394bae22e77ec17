"""`make demo`: the whole pipeline on a laptop, one simulated hour in about a minute.

broker (local KRaft) -> leases + simulated agents -> Faust worker -> Parquet sink
-> billing invoices. Prints each tenant's invoice and where the Parquet lies.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import uuid
from pathlib import Path

from deploy.local.fleet import demo_plan, publish_leases, publish_samples
from deploy.local.kafka_broker import BrokerUnavailable, start_broker
from deploy.local.pipeline import service_env, start_sink, start_worker, wait_for

DEMO_START_MS = 1_793_577_600_000  # 2026-11-02T00:00:00Z, a valley hour


def windows_written(usage_dir: Path, start_ms: int, end_ms: int, gpus: list[str]) -> int:
    """Distinct (GPU, window) pairs of `gpus` in the Parquet with windows starting in [start, end)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    files = [str(p) for p in usage_dir.glob("date=*/*.parquet")]
    if not files:
        return 0
    table = ds.dataset(files, format="parquet").to_table(
        columns=["gpu_uuid", "window_start_ms"],
        filter=(pc.field("window_start_ms") >= start_ms)
        & (pc.field("window_start_ms") < end_ms)
        & pc.field("gpu_uuid").isin(gpus),
    )
    return len(set(zip(table["gpu_uuid"].to_pylist(), table["window_start_ms"].to_pylist())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where the Parquet and logs go")
    parser.add_argument("--minutes", type=int, default=60, help="simulated minutes (default 60)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    usage_dir = out / "usage"
    began = time.monotonic()
    print("1/5 starting the Kafka broker (KRaft, loopback) ...", flush=True)
    try:
        broker = start_broker(Path(".wattmeter/demo-kafka"))
    except BrokerUnavailable as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    print(f"    broker at {broker.bootstrap} ({broker.mode})", flush=True)
    services = []
    try:
        plan = demo_plan(DEMO_START_MS, args.minutes)
        publish_leases(broker.bootstrap, plan.leases)
        print(
            f"2/5 published {len(plan.leases)} leases; simulating {len(plan.gpu_uuids())} GPUs on "
            f"{len(plan.nodes)} nodes for {args.minutes} minutes ...",
            flush=True,
        )
        sent = publish_samples(broker.bootstrap, plan)
        print(f"    {sent} node samples ({sent * plan.gpus_per_node} GPU-samples) sent to gpu.samples", flush=True)
        env = service_env(
            broker.bootstrap,
            f"wattmeter-demo-{uuid.uuid4().hex[:8]}",
            usage_dir,
            out / "state",
            WATTMETER_CHECK_FUTURE="0",
            WATTMETER_SINK_SECONDS="1",
        )
        print("3/5 running the Faust worker and the Parquet sink ...", flush=True)
        services = [start_worker(env, out / "logs" / "worker.log"), start_sink(env, out / "logs" / "sink.log")]
        end_ms = DEMO_START_MS + args.minutes * 60_000
        expected = len(plan.gpu_uuids()) * args.minutes
        gpus = plan.gpu_uuids()
        wait_for(
            lambda: windows_written(usage_dir, DEMO_START_MS, end_ms, gpus) >= expected,
            600,
            f"{expected} GPU-windows in Parquet",
            tuple(services),
        )
        print(f"    {expected} GPU-minutes rolled up and written", flush=True)
        for service in services:
            service.stop()
        print("4/5 invoices (flat rate card):\n", flush=True)
        from billing.cli import main as billing_main
        from schemas.units import ms_to_datetime

        code = billing_main(
            [
                "invoice",
                "--usage-dir",
                str(usage_dir),
                "--from",
                ms_to_datetime(DEMO_START_MS).isoformat(),
                "--to",
                ms_to_datetime(end_ms).isoformat(),
            ]
        )
        print(
            f"5/5 Parquet: {usage_dir}/date=YYYY-MM-DD/*.parquet (read it with DuckDB: "
            f"select tenant_id, sum(energy_mj) from read_parquet('{usage_dir}/date=*/*.parquet') group by 1)"
        )
        print(f"    demo took {time.monotonic() - began:.0f} s", flush=True)
        return code
    finally:
        for service in services:
            service.stop()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
