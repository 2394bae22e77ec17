"""Server-rendered SVG charts: stacked bars of a quantity per day (or hour), one stack per time-of-use
period (valley under peak). No JavaScript: the same markup works in the portal, in the statement's
HTML and in its PDF (WeasyPrint draws inline SVG).

Accessible: the SVG is `role="img"` with a `<title>` and a `<desc>` that says the total, every bar
has its own `<title>` (a tooltip in browsers), and `data_table()` renders the same numbers as a
table for screen readers and for anyone who wants the figures rather than the picture.

Geometry is float (pixels); the numbers shown are the Decimals given, formatted by the caller's
`fmt` (the tenant's locale), so a chart never shows a rounded float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from markupsafe import Markup, escape

# the order periods stack in, bottom first, and their colours; other names get the fallbacks
KNOWN_SERIES = {"valley": "#2f9e78", "peak": "#e07b2e", "shoulder": "#d4b23a"}
FALLBACK_COLOURS = ("#5b7bd5", "#a05fc4", "#7a8699", "#c2506a")
ZERO = Decimal(0)


@dataclass(frozen=True)
class Totals:
    """A chart's totals, given rather than summed from its bars: per series, and in all."""

    by_series: dict[str, Decimal]
    grand: Decimal


def _totals(bars: Sequence[Bar], series: Sequence[str], given: Totals | None) -> tuple[dict[str, Decimal], Decimal]:
    if given is not None:
        return {name: given.by_series.get(name, ZERO) for name in series}, given.grand
    summed = {name: sum((bar.values.get(name, ZERO) for bar in bars), ZERO) for name in series}
    return summed, sum(summed.values(), ZERO)


@dataclass(frozen=True)
class Bar:
    """One bar: `label` under the axis ("2"), `key` its full name ("Mon 2 Nov 2026"), one value per series."""

    label: str
    key: str
    values: dict[str, Decimal] = field(default_factory=dict)
    href: str | None = None

    @property
    def total(self) -> Decimal:
        return sum(self.values.values(), ZERO)


def order_series(names: Sequence[str] | set[str]) -> list[str]:
    """valley first (the bottom of a stack), then peak, then any other period by name."""
    known = [n for n in KNOWN_SERIES if n in names]
    return known + sorted(n for n in names if n not in KNOWN_SERIES)


def series_colours(series: Sequence[str]) -> dict[str, str]:
    out, spare = {}, iter(FALLBACK_COLOURS * (1 + len(series) // len(FALLBACK_COLOURS)))
    for name in series:
        out[name] = KNOWN_SERIES.get(name) or next(spare)
    return out


def nice_step(maximum: float, ticks: int = 4) -> float:
    """A round tick step (1, 2, 2.5 or 5 x 10^k) so that `ticks` steps cover `maximum`."""
    if maximum <= 0:
        return 1.0
    raw = maximum / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def stacked_bars(
    bars: Sequence[Bar],
    *,
    chart_id: str,
    title: str,
    unit: str,
    fmt: Callable[[Decimal], str],
    series_labels: dict[str, str] | None = None,
    width: int = 760,
    height: int = 280,
    totals: Totals | None = None,
) -> Markup:
    """A stacked bar chart as inline SVG. `fmt` formats a Decimal with its unit for people.

    The legend and the total show `totals` when given (each figure rounded once from the exact
    quantity, where a sum of the bars' rounded values could differ in the last place)."""
    series = order_series({name for bar in bars for name in bar.values})
    colours = series_colours(series)
    labels = series_labels or {}
    by_series, grand = _totals(bars, series, totals)
    # legend rows first: their height sets the top of the plot
    legend: list[tuple[float, float, str, str]] = []  # x, y, series, text
    x, y = 8.0, 8.0
    for name in series:
        text = f"{labels.get(name, name)} {fmt(by_series[name])}"
        wide = 24 + 7.0 * len(text)
        if x > 8 and x + wide > width - 8:
            x, y = 8.0, y + 18
        legend.append((x, y, name, text))
        x += wide + 12
    left, right, top, bottom = 52, 10, int(y) + 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak_total = max((float(bar.total) for bar in bars), default=0.0)
    step = nice_step(peak_total)
    top_value = step * max(1, math.ceil(peak_total / step)) if peak_total > 0 else step * 4
    scale = plot_h / top_value
    slot = plot_w / max(1, len(bars))
    bar_w = max(2.0, slot * 0.72)
    every = max(1, math.ceil(len(bars) / max(4, plot_w // 30)))  # x labels at least ~30 px apart

    desc = f"{title}: total {fmt(grand)}" + "".join(
        f"; {labels.get(name, name)} {fmt(by_series[name])}" for name in series
    )
    out: list[str] = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc" xmlns="http://www.w3.org/2000/svg" '
        f'preserveAspectRatio="xMidYMid meet" '
        'font-family="DejaVu Sans, Segoe UI, Roboto, Helvetica, Arial, sans-serif">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>',
    ]
    for lx, ly, name, text in legend:
        out.append(f'<rect x="{_num(lx)}" y="{_num(ly)}" width="12" height="12" rx="2" fill="{colours[name]}"/>')
        out.append(
            f'<text x="{_num(lx + 17)}" y="{_num(ly + 10.5)}" font-size="12" fill="#1d2330" class="legend" '
            f'data-series="{escape(name)}" data-total="{by_series[name]}">{escape(text)}</text>'
        )
    # grid and y axis labels
    ticks = round(top_value / step)
    for i in range(ticks + 1):
        value = step * i
        y = top + plot_h - value * scale
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{_num(y)}" y2="{_num(y)}" '
            f'stroke="{"#9aa3b2" if i == 0 else "#e3e6ec"}" stroke-width="1"/>'
        )
        tick = (Decimal(repr(step)) * i).normalize()  # exact: 3 x 0.1 is 0.3, not 0.30000000000000004
        out.append(
            f'<text x="{left - 6}" y="{_num(y + 4)}" font-size="11" text-anchor="end" fill="#5b6475">'
            f"{escape(_short(tick))}</text>"
        )
    out.append(
        f'<text x="11" y="{_num(top + plot_h / 2)}" font-size="11" fill="#5b6475" text-anchor="middle" '
        f'transform="rotate(-90 11 {_num(top + plot_h / 2)})">{escape(unit)}</text>'
    )
    # bars
    for index, bar in enumerate(bars):
        x0 = left + index * slot + (slot - bar_w) / 2
        y = float(top + plot_h)
        parts = [f"{labels.get(n, n)} {fmt(bar.values.get(n, ZERO))}" for n in series]
        tooltip = f"{bar.key}: {fmt(bar.total)} ({', '.join(parts)})"
        group = [
            f'<g class="bar" data-key="{escape(bar.key)}" data-total="{bar.total}">',
            f"<title>{escape(tooltip)}</title>",
        ]
        for name in series:
            amount = bar.values.get(name, ZERO)
            if amount <= 0:
                continue
            h = float(amount) * scale
            y -= h
            group.append(
                f'<rect x="{_num(x0)}" y="{_num(y)}" width="{_num(bar_w)}" height="{_num(max(h, 0.5))}" '
                f'fill="{colours[name]}" data-series="{escape(name)}" data-value="{amount}"/>'
            )
        if bar.total <= 0:  # an empty day still answers to a hover
            group.append(f'<rect x="{_num(x0)}" y="{top}" width="{_num(bar_w)}" height="{plot_h}" fill="transparent"/>')
        group.append("</g>")
        body = "".join(group)
        out.append(f'<a href="{escape(bar.href)}">{body}</a>' if bar.href else body)
        if index % every == 0:
            cx = x0 + bar_w / 2
            out.append(
                f'<text x="{_num(cx)}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle" '
                f'fill="#5b6475">{escape(bar.label)}</text>'
            )
    out.append(
        f'<text x="{width - right}" y="{height - 6}" font-size="12" text-anchor="end" fill="#1d2330" '
        f'font-weight="600" class="chart-total" data-total="{grand}">Total {escape(fmt(grand))}</text>'
    )
    out.append("</svg>")
    return Markup("".join(out))


def _short(value: Decimal) -> str:
    """A tick label: 1500 -> 1.5k, 2000000 -> 2M, 0.25 -> 0.25."""
    for size, suffix in ((Decimal(10) ** 9, "G"), (Decimal(10) ** 6, "M"), (Decimal(1000), "k")):
        if abs(value) >= size:
            return f"{(value / size).normalize():f}{suffix}"
    return f"{value.normalize():f}"


def data_table(
    bars: Sequence[Bar],
    *,
    caption: str,
    fmt: Callable[[Decimal], str],
    series_labels: dict[str, str] | None = None,
    key_header: str = "Day",
    totals: Totals | None = None,
) -> Markup:
    """The chart's numbers as an HTML table (the accessible fallback; hidden visually by the portal's CSS
    class `sr-only` or shown in a <details>)."""
    series = order_series({name for bar in bars for name in bar.values})
    labels = series_labels or {}
    head = "".join(f'<th scope="col" class="num">{escape(labels.get(n, n))}</th>' for n in series)
    rows = []
    for bar in bars:
        cells = "".join(f'<td class="num">{escape(fmt(bar.values.get(n, ZERO)))}</td>' for n in series)
        rows.append(
            f'<tr><th scope="row">{escape(bar.key)}</th>{cells}<td class="num">{escape(fmt(bar.total))}</td></tr>'
        )
    by_series, grand = _totals(bars, series, totals)
    foot = "".join(f'<td class="num">{escape(fmt(by_series[n]))}</td>' for n in series)
    return Markup(
        f'<table class="data"><caption>{escape(caption)}</caption><thead><tr><th scope="col">{escape(key_header)}</th>'
        f'{head}<th scope="col" class="num">Total</th></tr></thead><tbody>{"".join(rows)}</tbody>'
        f'<tfoot><tr><th scope="row">Total</th>{foot}<td class="num">{escape(fmt(grand))}</td></tr></tfoot></table>'
    )
