"""Worker settings, from the environment (WATTMETER_*) with command-line overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from streams.rollup import RollupConfig
from streams.windows import ValleyHours, check_window


@dataclass
class StreamsSettings:
    bootstrap: str = field(default_factory=lambda: os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    app_id: str = field(default_factory=lambda: os.environ.get("WATTMETER_STREAMS_APP_ID", "wattmeter-streams"))
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("WATTMETER_STREAMS_DATA", ".wattmeter/streams")))
    # the usage lake: a folder or s3://bucket/prefix (lake.store)
    usage_dir: str = field(default_factory=lambda: os.environ.get("WATTMETER_USAGE_DIR", ".wattmeter/usage"))
    # the rollup's settings default to RollupConfig's
    window_ms: int = field(default_factory=lambda: int(os.environ.get("WATTMETER_WINDOW_MS", RollupConfig.window_ms)))
    lateness_ms: int = field(
        default_factory=lambda: int(os.environ.get("WATTMETER_LATENESS_MS", RollupConfig.lateness_ms))
    )
    max_gap_ms: int = field(
        default_factory=lambda: int(os.environ.get("WATTMETER_MAX_GAP_MS", RollupConfig.max_gap_ms))
    )
    idle_close_ms: int = field(
        default_factory=lambda: int(os.environ.get("WATTMETER_IDLE_CLOSE_MS", RollupConfig.idle_close_ms))
    )
    valley_hours: str = field(default_factory=lambda: os.environ.get("WATTMETER_VALLEY_HOURS", "0-6"))
    # at_least_once plus idempotent outputs: see docs/design-notes.md for why not Faust's exactly_once
    processing_guarantee: str = field(
        default_factory=lambda: os.environ.get("WATTMETER_PROCESSING_GUARANTEE", "at_least_once")
    )
    # how soon a dead worker's or sink's partitions move to the others (Kafka group session timeout)
    session_timeout_s: float = field(default_factory=lambda: float(os.environ.get("WATTMETER_SESSION_TIMEOUT_S", "30")))
    # table store: memory:// (restored from the changelog on start) or rocksdb:// where
    # faust-streaming's RocksDB driver (rocksdict) is installed, for fast restarts of big state
    store: str = field(default_factory=lambda: os.environ.get("WATTMETER_STORE", "memory://"))
    batch_events: int = field(default_factory=lambda: int(os.environ.get("WATTMETER_BATCH_EVENTS", "500")))
    batch_seconds: float = field(default_factory=lambda: float(os.environ.get("WATTMETER_BATCH_SECONDS", "0.05")))
    web_port: int = field(default_factory=lambda: int(os.environ.get("WATTMETER_STREAMS_WEB_PORT", "6066")))
    # far-future check against the wall clock; off for simulated-clock demos
    check_future: bool = field(default_factory=lambda: os.environ.get("WATTMETER_CHECK_FUTURE", "1") == "1")
    sink_group: str = field(default_factory=lambda: os.environ.get("WATTMETER_SINK_GROUP", "wattmeter-parquet-sink"))
    sink_batch_records: int = field(default_factory=lambda: int(os.environ.get("WATTMETER_SINK_BATCH", "50000")))
    sink_batch_seconds: float = field(default_factory=lambda: float(os.environ.get("WATTMETER_SINK_SECONDS", "5")))

    def rollup_config(self) -> RollupConfig:
        check_window(self.window_ms)
        return RollupConfig(
            window_ms=self.window_ms,
            lateness_ms=self.lateness_ms,
            max_gap_ms=self.max_gap_ms,
            idle_close_ms=self.idle_close_ms,
            valley_hours=ValleyHours.parse(self.valley_hours),
        )
