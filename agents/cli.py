"""wattmeter-agent: the node agent's command line."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading

from agents.backends.simulated import MODELS, SimulatedBackend
from agents.clock import SimulatedClock, SystemClock
from agents.sampler import Sampler
from schemas.samples import NodeSample

DESCRIPTION = """\
The wattmeter node agent. Runs on every GPU host: samples each GPU (power, the
cumulative energy counter, utilization, memory) once per interval and streams one
message per tick to Kafka topic gpu.samples, keyed by node id.

examples:
  wattmeter-agent --backend simulated --gpus 8 --once --stdout   # print one sample and exit
  wattmeter-agent --backend simulated --bootstrap 127.0.0.1:9092  # stream simulated samples
"""


class StdoutSink:
    """Prints each sample as one JSON line (debugging, piping into jq)."""

    def send(self, sample: NodeSample) -> None:
        sys.stdout.write(json.dumps(sample.to_dict()) + "\n")

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        self.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wattmeter-agent", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["simulated"], default="simulated",
                        help="where readings come from (default: simulated)")
    parser.add_argument("--gpus", type=int, default=8, help="simulated: number of GPUs (default 8)")
    parser.add_argument("--model", choices=sorted(MODELS), default="H100", help="simulated: GPU model")
    parser.add_argument("--seed", type=int, default=0, help="simulated: seed for the load pattern")
    parser.add_argument("--node-id", default=os.environ.get("WATTMETER_NODE_ID", socket.gethostname()),
                        help="this host's id, the message key (default: hostname)")
    parser.add_argument("--interval-ms", type=int, default=1000, help="sampling interval (default 1000)")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--once", action="store_true", help="take one sample and exit")
    parser.add_argument("--ticks", type=int, help="stop after this many samples")
    parser.add_argument("--stdout", action="store_true", help="print samples as JSON lines instead of sending")
    parser.add_argument("--simulate-clock-from-ms", type=int,
                        help="simulated clock starting at this epoch ms: ticks jump instead of sleeping")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if not args.stdout and not args.bootstrap:
        print("wattmeter-agent: no Kafka to send to: pass --bootstrap HOST:PORT, set "
              "KAFKA_BOOTSTRAP_SERVERS, or use --stdout", file=sys.stderr)
        return 2
    backend = SimulatedBackend(gpus=args.gpus, model=args.model, seed=args.seed, node_id=args.node_id)
    clock = SimulatedClock(args.simulate_clock_from_ms) if args.simulate_clock_from_ms is not None else SystemClock()
    sampler = Sampler(backend, clock, args.node_id, args.interval_ms)
    if args.stdout:
        sink = StdoutSink()
    else:
        from agents.kafka_sink import KafkaSampleSink

        sink = KafkaSampleSink(args.bootstrap)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        sampler.run(sink, ticks=1 if args.once else args.ticks, stop=stop)
    finally:
        sink.close()
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
