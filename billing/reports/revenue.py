"""Revenue of a fleet period by GPU model. Pure: no SQL, no clock; money exact (integer minor units).

The pre-tax amount of an invoice (every line but tax and credit) goes to GPU models: a line with a
model to that model; the lines without one (energy, discount, commitment true-up) are shared among
the invoice's models in proportion to their model lines' amounts (negative sums count as 0; all
zero: by their GPU-ms), in whole minor units by largest remainder (`billing.pricing.money`), so
every invoice is shared out exactly; an invoice with no model line at all stays unallocated. Money
in different currencies is never added.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from billing.pricing.money import from_minor, largest_remainder, to_minor
from billing.reports.errors import ReportError

NOT_REVENUE = frozenset({"tax", "credit"})  # every other invoice line is pre-tax revenue


@dataclass(frozen=True, slots=True)
class RevenueLine:
    """An invoice line as revenue sees it: its kind, model ("" for none), amount and GPU-ms."""

    kind: str
    model: str
    amount: Decimal
    quantity_ms: int = 0
    plan: str = ""
    tou_period: str = ""  # the rate card's time-of-use period of a GPU time or energy line


@dataclass(frozen=True)
class InvoiceRevenue:
    """An invoice of the period: `subtotal` is its pre-tax total, which its lines must make up."""

    invoice_id: int
    label: str  # its number, or "draft #7"
    tenant_id: str
    currency: str
    status: str
    subtotal: Decimal
    lines: tuple[RevenueLine, ...]


@dataclass(frozen=True)
class Revenue:
    """Revenue per model and currency, what stayed unallocated, and what the invoices add up to."""

    by_model: Mapping[str, Mapping[str, Decimal]]
    unallocated: Mapping[str, Decimal]
    invoiced: Mapping[str, Decimal]  # per currency: the sum of the invoices' subtotals
    invoices: int


@dataclass
class _InvoiceSplit:
    """One invoice's pre-tax lines in minor units: per model (with their GPU-ms) and the rest."""

    model_minor: dict[str, int]
    model_ms: dict[str, int]
    rest: int

    def share_weights(self) -> dict[str, int]:
        """The models' weights for the rest: their amounts (negative as 0), else their GPU-ms; may sum to 0."""
        weights = {model: max(0, units) for model, units in self.model_minor.items()}
        if not sum(weights.values()):
            weights = {model: max(0, ms) for model, ms in self.model_ms.items()}
        return weights


def _split(invoice: InvoiceRevenue) -> _InvoiceSplit:
    """The invoice's pre-tax lines by model; a ReportError when they do not make up its subtotal."""
    currency = invoice.currency
    model_minor: dict[str, int] = defaultdict(int)
    model_ms: dict[str, int] = defaultdict(int)
    rest = 0
    for line in invoice.lines:
        if line.kind in NOT_REVENUE:
            continue
        units = to_minor(line.amount, currency)
        if line.model:
            model_minor[line.model] += units
            model_ms[line.model] += line.quantity_ms
        else:
            rest += units
    lines_minor = sum(model_minor.values()) + rest
    if lines_minor != to_minor(invoice.subtotal, currency):
        raise ReportError(
            f"invoice {invoice.label} of tenant {invoice.tenant_id}: its pre-tax lines sum to "
            f"{from_minor(lines_minor, currency)} {currency}, its subtotal is "
            f"{invoice.subtotal} {currency}"
        )
    return _InvoiceSplit(model_minor, model_ms, rest)


def attribute_revenue(invoices: Iterable[InvoiceRevenue]) -> Revenue:
    """Share each invoice's pre-tax amount among GPU models (see the module docstring)."""
    by_model: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # model -> currency -> minor
    unallocated: dict[str, int] = defaultdict(int)
    invoiced: dict[str, int] = defaultdict(int)
    count = 0
    for invoice in invoices:
        count += 1
        currency = invoice.currency
        split = _split(invoice)
        invoiced[currency] += to_minor(invoice.subtotal, currency)
        for model, units in split.model_minor.items():
            by_model[model][currency] += units
        if split.rest == 0:
            continue
        weights = split.share_weights()
        if not sum(weights.values()):
            unallocated[currency] += split.rest
            continue
        for model, units in largest_remainder(split.rest, weights).items():
            by_model[model][currency] += units
    return Revenue(
        by_model={
            model: {c: from_minor(u, c) for c, u in sorted(money.items())} for model, money in sorted(by_model.items())
        },
        unallocated={c: from_minor(u, c) for c, u in sorted(unallocated.items()) if u},
        invoiced={c: from_minor(u, c) for c, u in sorted(invoiced.items())},
        invoices=count,
    )
