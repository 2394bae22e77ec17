"""The usage engines by name: what `--engine duckdb|spark` and $WATTMETER_USAGE_ENGINE choose.

Both engines answer the same `ScanInput` with the same rows (tests/billing/usage/test_spark_engine.py),
so rating, consumption and reconciliation stay one code path over either's quantities.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from billing.usage.errors import UsageDataError

if TYPE_CHECKING:
    from billing.usage.reader import Engine

ENGINE_ENV = "WATTMETER_USAGE_ENGINE"
ENGINES = ("duckdb", "spark")


def engine_named(name: str) -> Engine:
    """The engine called `name` (one of ENGINES); Spark's module imports without pyspark installed,
    and says what is missing on its first scan. Imported here: the command line starts without them."""
    if name == "duckdb":
        from billing.usage.reader import duckdb_grouped

        return duckdb_grouped
    if name == "spark":
        from billing.usage.spark_engine import spark_grouped

        return spark_grouped
    raise UsageDataError(f"unknown usage engine {name!r} (${ENGINE_ENV} or --engine: {' or '.join(ENGINES)})")


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """`--engine duckdb|spark` on a command that aggregates usage (default $WATTMETER_USAGE_ENGINE, else duckdb)."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=os.environ.get(ENGINE_ENV) or "duckdb",  # a bad value is refused by engine_named, in one line
        help="what aggregates the minute records: duckdb in this process, or spark at $WATTMETER_SPARK_MASTER "
        f"(default ${ENGINE_ENV}, else duckdb)",
    )
