"""wattmeter-agent: the node agent's command line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from agents.backends.base import GpuBackend
from agents.backends.simulated import MODELS
from agents.config import AgentConfig, ConfigError, load_config
from schemas.logs import setup_plain_logging
from schemas.samples import NodeSample

log = logging.getLogger("wattmeter-agent")

DESCRIPTION = """\
The wattmeter node agent. Runs on every GPU host: samples each GPU (power, NVML's
cumulative energy counter, utilization, memory; MIG instances too) once per interval
and streams one message per tick to the Kafka topic gpu.samples, keyed by node id.
Samples are written to a local spool (SQLite, fsynced) before they are sent, so none
is lost while Kafka is unreachable or if the agent is killed; they drain in order.

Settings: built-in defaults < --config FILE (TOML) < WATTMETER_*/KAFKA_* environment
< flags. Prometheus metrics on --metrics-port. SIGTERM stops sampling and drains.

examples:
  wattmeter-agent --backend simulated --gpus 8 --once --stdout    # one sample as JSON
  wattmeter-agent --backend nvml --bootstrap kafka-1:9092          # the real GPUs
  wattmeter-agent --backend replay --trace smi.csv --speed 60 --stdout
  wattmeter-agent --backend replay --trace one-gpu.csv --gpu-uuid GPU-1b2c... --tz Europe/Berlin --speed 0
  wattmeter-agent --backend replay --trace no-ids-8-gpus.csv --gpus-per-sweep 8 --speed 0
  wattmeter-agent --config /etc/wattmeter/agent.toml
"""


class StdoutSink:
    """Prints each sample as one JSON line (debugging, piping into jq)."""

    def send(self, sample: NodeSample) -> None:
        sys.stdout.write(json.dumps(sample.to_dict()) + "\n")
        sys.stdout.flush()

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        self.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattmeter-agent", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="TOML config file (see deploy/systemd/agent.toml.example)")
    parser.add_argument("--backend", choices=["nvml", "simulated", "replay"], help="where readings come from")
    parser.add_argument("--node-id", help="this host's id, the message key (default: hostname)")
    parser.add_argument("--interval-ms", type=int, help="sampling interval (default 1000)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--spool-dir", type=Path, help="where unsent samples wait (default .wattmeter/agent-spool)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: off)")
    parser.add_argument("--gpus", type=int, help="simulated: number of GPUs (default 8)")
    parser.add_argument("--model", choices=sorted(MODELS), help="simulated: GPU model (default H100)")
    parser.add_argument("--seed", type=int, help="simulated: seed of the load pattern")
    parser.add_argument("--mig-per-gpu", type=int, help="simulated: MIG instances per GPU (default 0)")
    parser.add_argument("--trace", type=Path, help="replay: CSV trace (nvidia-smi --format=csv or simple)")
    parser.add_argument("--speed", type=float, help="replay: speed-up over recorded time (0: as fast as possible)")
    parser.add_argument(
        "--tz",
        dest="trace_tz",
        metavar="ZONE",
        help="replay: zone of the trace's timestamps written without one, an IANA name (Europe/Berlin) "
        "or an offset (+05:30) (default UTC)",
    )
    parser.add_argument(
        "--gpu-uuid",
        dest="trace_gpu_uuid",
        metavar="UUID",
        help="replay: the GPU of a single-GPU trace with no GPU id column (nvidia-smi --query-gpu=uuid prints it)",
    )
    parser.add_argument(
        "--gpus-per-sweep",
        dest="trace_gpus_per_sweep",
        type=int,
        metavar="N",
        help="replay: a trace with no GPU id column holds N GPUs, one row each per sweep; "
        "GPUs are named <node id>:index:<row position in the sweep>",
    )
    parser.add_argument("--once", action="store_true", help="take one sample and exit")
    parser.add_argument("--ticks", type=int, help="stop after this many samples")
    parser.add_argument("--stdout", action="store_true", help="print samples as JSON lines; no Kafka, no spool")
    return parser


def _config(args: argparse.Namespace) -> AgentConfig:
    overrides = {
        name: getattr(args, name)
        for name in (
            "backend",
            "node_id",
            "interval_ms",
            "spool_dir",
            "metrics_port",
            "gpus",
            "model",
            "seed",
            "mig_per_gpu",
            "trace",
            "speed",
            "trace_tz",
            "trace_gpu_uuid",
            "trace_gpus_per_sweep",
        )
    }
    config = load_config(args.config, overrides)
    if args.bootstrap:
        config.kafka["bootstrap_servers"] = args.bootstrap
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_plain_logging()
    from agents.backends.errors import BackendUnavailable, TraceError
    from agents.daemon import build_backend

    try:
        config = _config(args)
        if not args.stdout and not config.bootstrap:
            raise ConfigError(
                "no Kafka to send to: pass --bootstrap HOST:PORT, set KAFKA_BOOTSTRAP_SERVERS, "
                "put bootstrap_servers under [kafka] in the config file, or use --stdout"
            )
        backend = build_backend(config)
    except (ConfigError, BackendUnavailable, TraceError) as exc:
        print(f"wattmeter-agent: {exc}", file=sys.stderr)
        return 2
    ticks = 1 if args.once else args.ticks
    if args.stdout:
        return run_to_stdout(config, backend, ticks)
    return run_daemon(config, backend, ticks)


def run_to_stdout(config: AgentConfig, backend: GpuBackend, ticks: int | None) -> int:
    """Sample into stdout as JSON lines: no spool, no Kafka."""
    from agents.clock import SystemClock
    from agents.daemon import replay_timestamps
    from agents.sampler import Sampler

    sampler = Sampler(backend, SystemClock(), config.node_id, config.interval_ms)
    if config.backend == "replay":
        taken = sampler.replay(StdoutSink(), replay_timestamps(backend), config.speed, ticks=ticks)
    else:
        taken = sampler.run(StdoutSink(), ticks=ticks)
    log.info("%s", summary_line(config.node_id, taken, None, None))
    return 0


def run_daemon(config: AgentConfig, backend: GpuBackend, ticks: int | None) -> int:
    """Sample into the spool and send it to Kafka until SIGTERM (or `ticks`), then drain."""
    from agents.daemon import AgentDaemon

    daemon = AgentDaemon(config, backend=backend)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    taken = daemon.run(ticks=ticks)
    registry = daemon.metrics.registry
    sent = int(registry.get_sample_value("wattmeter_agent_samples_sent_total") or 0)
    dropped = int(registry.get_sample_value("wattmeter_agent_samples_dropped_total") or 0)
    log.info("%s", summary_line(config.node_id, taken, sent, daemon.spool.pending_rows, dropped))
    return 0


def summary_line(node_id: str, taken: int, sent: int | None, spooled: int | None, dropped: int = 0) -> str:
    """The one line an agent run ends with: what it sampled, what Kafka acknowledged, what is
    left on disk for the next start (sent and spooled are None with --stdout: nothing is)."""
    if sent is None or spooled is None:
        return f"done: node {node_id}: {taken} samples taken, printed to stdout (no Kafka, no spool)"
    line = f"done: node {node_id}: {taken} samples taken, {sent} sent, {spooled} still spooled"
    if spooled:
        line += " (sent at the next start)"
    if dropped:
        line += f", {dropped} DROPPED (spool over its bounds)"
    return line


if __name__ == "__main__":
    sys.exit(main())
