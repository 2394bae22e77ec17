"""CSV cells that a spreadsheet opens as text, never as a formula (CSV injection).

A spreadsheet treats a cell that starts with `=`, `+`, `-` or `@` as a formula, and one that starts
with a tab or a carriage return can hide such a start. Tenant ids and names, GPU uuids and models
come from people and agents, so every CSV wattmeter writes passes each cell through `csv_cell`,
which does what OWASP describes: such a cell gets a leading single quote (`'=HYPERLINK(...)`), which
the spreadsheet shows as text; the csv module's quoting takes care of commas, quotes and newlines.

Exempt: a cell that is exactly a plain decimal number (`-12.50`, `+3`, `-1E-8`), as wattmeter writes
amounts and quantities. Such a cell cannot be a formula: a spreadsheet reads it as the number it is,
and quoting it would turn every negative amount into text.

A program reading the CSV back sees the quote: `'=x` is the text a hostile party put there, marked.
"""

from __future__ import annotations

import re

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_cell(value: str) -> str:
    """`value`, with a leading `'` if a spreadsheet would take it for a formula (see the module docstring)."""
    if value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value
