"""The results file of `make bench`: one object per figure, with its same-run baseline."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_PATH = Path(__file__).with_name("results.json")


@dataclass
class BenchResult:
    name: str
    value: float
    unit: str
    baseline: str  # what it was compared with, measured in the same run
    baseline_value: float
    target: str
    ratio: float = 0.0  # value / baseline_value

    def __post_init__(self) -> None:
        self.ratio = round(self.value / self.baseline_value, 4) if self.baseline_value else 0.0


def write_results(results: list[BenchResult], path: Path = RESULTS_PATH) -> None:
    path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def _figure(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"


def table(results: list[BenchResult]) -> str:
    rows = [("name", "value", "unit", "baseline", "baseline_value", "ratio", "target")]
    rows += [
        (r.name, _figure(r.value), r.unit, r.baseline, _figure(r.baseline_value), f"{r.ratio:.3f}", r.target)
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
