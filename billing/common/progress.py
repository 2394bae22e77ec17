"""The progress bar of the finance commands (`run`, `stripe push`, `close`): a tqdm bar on stderr
ticked once per item with the item's name, only on a terminal and never with --json."""

from __future__ import annotations

import sys
from typing import Any


class TickBar:
    """`bar(name)` counts one item and shows its name; `bar.close()` ends the bar."""

    def __init__(self, desc: str, unit: str, total: int | None = None, leave: bool = False) -> None:
        from tqdm import tqdm

        self._bar: Any = tqdm(desc=desc, total=total, unit=unit, file=sys.stderr, leave=leave)

    def __call__(self, message: str) -> None:
        self._bar.set_postfix_str(message[:40])
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def tick_bar(desc: str, unit: str, *, json: bool, total: int | None = None, leave: bool = False) -> TickBar | None:
    """A bar when stderr is a terminal and the output is not JSON, else None (nothing to show)."""
    if json or not sys.stderr.isatty():
        return None
    return TickBar(desc, unit, total, leave)
