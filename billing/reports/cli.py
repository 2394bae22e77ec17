"""`wattmeter-billing yield --period P` (helper C fills this in)."""

from __future__ import annotations

import argparse
from typing import Any


def add_yield_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Register `yield` (stub until the yield report lands)."""
