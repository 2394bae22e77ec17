"""The one mapper between the invoice-line domain type (`billing.pricing.lines.InvoiceLine`) and
its stored forms: an `invoice_lines` row, and the JSON object a credit note keeps per line (and
an invoice's content hash covers). Money is stored as Decimal in rows and as its exact string in
JSON; nothing is rounded here."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from billing.ledger import models
from billing.pricing.lines import InvoiceLine, line_kind

# the stored fields of a line, in the order a line's JSON object lists them
STORED_FIELDS = (
    "kind",
    "description",
    "service_start_ms",
    "service_end_ms",
    "service_period",
    "correction",
    "card_name",
    "card_version",
    "plan",
    "model",
    "tou_period",
    "tier",
    "quantity_base",
    "base_unit",
    "quantity",
    "unit",
    "unit_price",
    "amount",
)
_DECIMAL_FIELDS = frozenset({"quantity", "unit_price", "amount"})


def line_from_row(row: models.InvoiceLineRow) -> InvoiceLine:
    """A stored invoice line as the domain type (its `position` on the invoice kept)."""
    values = {name: getattr(row, name) for name in STORED_FIELDS}
    return _line(values, row.position)


def line_from_json(values: dict[str, Any], position: int) -> InvoiceLine:
    """A line of a credit note (or of a draft's JSON) as the domain type; `position` is its index."""
    return _line({name: values[name] for name in STORED_FIELDS}, position)


def stored_values(line: InvoiceLine) -> dict[str, Any]:
    """Every stored field of the line, in STORED_FIELDS order, Decimals as exact strings."""
    return {
        name: str(getattr(line, name)) if name in _DECIMAL_FIELDS else getattr(line, name) for name in STORED_FIELDS
    }


def line_json(line: InvoiceLine, usage_query: dict[str, Any]) -> dict[str, Any]:
    """The line as stored in JSON: its stored values and the query `explain` re-runs over the Parquet."""
    return {**stored_values(line), "usage_query": usage_query}


def row_values(values: dict[str, Any]) -> dict[str, Any]:
    """A line's JSON object as the keyword arguments of an `invoice_lines` row (Decimals back)."""
    return {name: Decimal(value) if name in _DECIMAL_FIELDS else value for name, value in values.items()}


def _line(values: dict[str, Any], position: int) -> InvoiceLine:
    for name in _DECIMAL_FIELDS:
        values[name] = Decimal(values[name])
    values["kind"] = line_kind(values["kind"], position)
    return InvoiceLine(position=position, **values)
