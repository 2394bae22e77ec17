"""`wattmeter-billing statement --tenant T --period P` (helper B fills this in)."""

from __future__ import annotations

import argparse
from typing import Any


def add_statement_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Register `statement` (stub until the statements land)."""
