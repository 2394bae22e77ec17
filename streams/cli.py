"""wattmeter-streams: run the rollup worker or the Parquet sink."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from streams.settings import StreamsSettings

DESCRIPTION = """\
The wattmeter stream processors.

  worker  Faust worker: reads gpu.samples, rejects bad messages to gpu.samples.dlq,
          dedupes, turns NVML counters into per-GPU energy and time, splits it at
          lease boundaries (gpu.leases) and one-minute windows, and emits one usage
          record per (tenant, GPU, window) to usage.records. Run as many as the
          gpu.samples partitions allow; they share the work as a consumer group.
  sink    Writes usage.records to hive-partitioned Parquet (usage/date=YYYY-MM-DD/),
          exactly once per offset (temp file, rename, then a per-partition manifest).

Settings come from WATTMETER_* environment variables (see README) or the flags below.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattmeter-streams", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["worker", "sink"], help="which process to run")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--usage-dir", type=Path, help="sink: Parquet root (default $WATTMETER_USAGE_DIR)")
    parser.add_argument("--data-dir", type=Path, help="worker: local state folder")
    parser.add_argument("--window-ms", type=int, help="worker: tumbling window length (default 60000)")
    parser.add_argument("--lateness-ms", type=int, help="worker: allowed lateness (default 5000)")
    parser.add_argument(
        "--no-future-check",
        action="store_true",
        help="worker: accept timestamps ahead of the wall clock (simulated-clock demos)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> StreamsSettings:
    settings = StreamsSettings()
    for name in ("bootstrap", "usage_dir", "data_dir", "window_ms", "lateness_ms"):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, value)
    if args.no_future_check:
        settings.check_future = False
    return settings


def run_worker(settings: StreamsSettings) -> int:
    import faust

    from streams.app import create_app
    from streams.lease_view import LeaseView

    view = LeaseView(settings.bootstrap)
    view.start()
    app = create_app(settings, view.index)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        view.stop()
    return 0


def run_sink(settings: StreamsSettings) -> int:
    from streams.sink_runner import SinkRunner

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    SinkRunner(
        settings.bootstrap,
        settings.usage_dir,
        settings.sink_batch_records,
        settings.sink_batch_seconds,
        group_id=settings.sink_group,
    ).run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = settings_from_args(args)
    try:
        settings.rollup_config()
    except Exception as exc:  # a setting that cannot work: say which, no traceback
        print(f"wattmeter-streams: {exc}", file=sys.stderr)
        return 2
    from kafka.errors import KafkaError

    try:
        return run_worker(settings) if args.command == "worker" else run_sink(settings)
    except (KafkaError, RuntimeError) as exc:  # no broker, no topics: say so, exit non-zero
        print(
            f"wattmeter-streams {args.command}: cannot work with Kafka at {settings.bootstrap}: {exc}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
