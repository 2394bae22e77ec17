"""`make bench`: run every benchmark against a real broker, write bench/results.json, print a table."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import (
    agent_bench,
    api_bench,
    billing_bench,
    close_bench,
    fleet_bench,
    follow_bench,
    lease_bench,
    market_bench,
    slice_throughput,
    streams_bench,
)
from bench.results import RESULTS_PATH, table, write_results
from deploy.local.kafka_broker import BrokerUnavailable, start_broker


def main() -> int:
    try:
        broker = start_broker(Path(".wattmeter/bench-kafka"))
    except BrokerUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    try:
        results = (
            slice_throughput.run(broker.bootstrap)
            + streams_bench.run(broker.bootstrap)
            + agent_bench.run(broker.bootstrap)
            + lease_bench.run(broker.bootstrap)
            + follow_bench.run(broker.bootstrap)  # usage_hourly behind the sink, beside the sink's own lag
        )
        broker.stop()  # the billing bench needs no broker: give its cores to DuckDB
        results += market_bench.run()  # an offer taken back, its notices delivered, beside the bare work
        results += billing_bench.run()
        results += close_bench.run()  # push to stripe-mock, reconcile the 10 M records
        results += api_bench.run()  # a tenant's month over HTTP, 8.76 M hourly rows, beside DuckDB
        results += fleet_bench.run()  # 43.2 M records: rate, reconcile, rollup; the sink on S3
    finally:
        broker.stop()
    write_results(results)
    print(table(results))
    print(f"\nwritten to {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
