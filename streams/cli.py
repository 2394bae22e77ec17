"""wattmeter-streams: run the rollup worker or the Parquet sink."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from schemas.logs import setup_logging
from streams.broker_watch import BrokerWatch
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

Both wait out a Kafka outage of any length: one log line when the broker is lost, one a
minute while it stays away, one when it is back. Logs go to stderr, one line per record,
without terminal control codes: text, or JSON lines with WATTMETER_LOG_FORMAT=json
(WATTMETER_LOG_LEVEL: INFO). A setting that cannot work (a bad bootstrap address) is one
line on stderr and exit status 2.

Settings come from WATTMETER_* environment variables (see README) or the flags below.
"""

WHO = {"worker": "the worker", "sink": "the Parquet sink"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattmeter-streams", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["worker", "sink"], help="which process to run")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument(
        "--usage-dir", help="sink: the usage lake, a folder or s3://bucket/prefix (default $WATTMETER_USAGE_DIR)"
    )
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


def run_worker(settings: StreamsSettings, watch: BrokerWatch, stop: threading.Event) -> int:
    import faust

    from streams.app import create_app
    from streams.lease_view import LeaseView

    view = LeaseView(settings.bootstrap, watch=watch)
    if not view.start(stop=stop):  # stopped while waiting for the broker
        return 0
    app = create_app(settings, view.index, watch)
    # our logging stays (override_logging=False): one handler, the noise filter, no stdout
    # redirection; no console spinner, whose cursor codes end up in log files
    worker = faust.Worker(app, quiet=True, override_logging=False)
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        view.stop()
    return 0


def run_sink(settings: StreamsSettings, watch: BrokerWatch, stop: threading.Event) -> int:
    from streams.sink_runner import SinkRunner

    SinkRunner(
        settings.bootstrap,
        settings.usage_dir,
        settings.sink_batch_records,
        settings.sink_batch_seconds,
        group_id=settings.sink_group,
        watch=watch,
        session_timeout_s=settings.session_timeout_s,
    ).run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    try:
        noise = setup_logging(args.command)
        settings.rollup_config()
        watch = BrokerWatch(settings.bootstrap, WHO[args.command], noise=noise)  # checks the address syntax
    except Exception as exc:  # a setting that cannot work: say which, no traceback
        print(f"wattmeter-streams: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()  # SIGTERM / Ctrl-C while waiting for the broker (Faust installs its own later)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    watch.start()
    from kafka.errors import KafkaError

    try:
        return run_worker(settings, watch, stop) if args.command == "worker" else run_sink(settings, watch, stop)
    except (KafkaError, RuntimeError) as exc:  # the broker answers but cannot serve us (no topics): say so
        print(
            f"wattmeter-streams {args.command}: cannot work with Kafka at {settings.bootstrap}: {exc}", file=sys.stderr
        )
        return 2
    finally:
        watch.stop()


if __name__ == "__main__":
    sys.exit(main())
