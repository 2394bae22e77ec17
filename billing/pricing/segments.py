"""Pricing segments: a service period cut at rate-card changes and time-of-use boundaries. Pure.

A `CardSpan` is a stretch of time priced by one rate card version (from `card_spans`, or built
by the invoicing service from a tenant's contracts). `pricing_segments` cuts each span by its
card's calendar, so every segment has one card and one period. The usage reader then sums
usage per segment (each one-minute window falls in exactly one segment, because every boundary
is a whole UTC minute: that is checked here, not assumed).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from billing.common.instants import ms_to_iso
from billing.pricing.errors import PricingError
from billing.pricing.ratecards import RateCardVersion
from schemas.units import MS_PER_MINUTE


@dataclass(frozen=True)
class CardSpan:
    """[start_ms, end_ms) priced by `card`."""

    start_ms: int
    end_ms: int
    card: RateCardVersion


@dataclass(frozen=True, slots=True)
class PricingSegment:
    """[start_ms, end_ms) in one card span (`span_index` into the spans list) and one period."""

    start_ms: int
    end_ms: int
    span_index: int
    period: str


def _check_minute(ts_ms: int, what: str) -> None:
    if ts_ms % MS_PER_MINUTE:
        raise PricingError(
            f"{what} {ms_to_iso(ts_ms)} is not on a whole minute: usage windows are whole UTC minutes, "
            "so every pricing boundary must be one"
        )


def card_spans(versions: Sequence[RateCardVersion], start_ms: int, end_ms: int) -> list[CardSpan]:
    """The spans of [start_ms, end_ms) under a sequence of card versions, each in effect from its
    `effective_from_ms` until the next one's; of two versions effective at the same instant the
    higher `version` wins. No version in effect at `start_ms` is a PricingError."""
    if end_ms <= start_ms:
        return []
    latest: dict[int, RateCardVersion] = {}
    for card in versions:
        _check_minute(card.effective_from_ms, f"rate card {card.label} effective_from")
        held = latest.get(card.effective_from_ms)
        if held is None or card.version > held.version:
            latest[card.effective_from_ms] = card
    ordered = [latest[instant] for instant in sorted(latest)]
    first = bisect_right([card.effective_from_ms for card in ordered], start_ms) - 1
    if first < 0:
        raise PricingError(f"no rate card version is in effect at {ms_to_iso(start_ms)}")
    spans: list[CardSpan] = []
    for index in range(first, len(ordered)):
        card = ordered[index]
        span_start = max(start_ms, card.effective_from_ms)
        span_end = min(end_ms, ordered[index + 1].effective_from_ms) if index + 1 < len(ordered) else end_ms
        if span_start >= end_ms:
            break
        if span_end > span_start:
            spans.append(CardSpan(span_start, span_end, card))
    return spans


def pricing_segments(spans: Sequence[CardSpan], start_ms: int, end_ms: int) -> list[PricingSegment]:
    """[start_ms, end_ms) cut at every card change and every time-of-use boundary.

    The spans must be in order and contiguous, cover [start_ms, end_ms), and never start before
    their card's `effective_from_ms`; every boundary (period, spans, cards, calendar) must be a
    whole UTC minute. The segments tile [start_ms, end_ms) exactly.
    """
    _check_minute(start_ms, "service period start")
    _check_minute(end_ms, "service period end")
    if end_ms < start_ms:
        raise PricingError(f"service period ends ({ms_to_iso(end_ms)}) before it starts ({ms_to_iso(start_ms)})")
    if end_ms == start_ms:
        return []
    if not spans:
        raise PricingError("no rate card span covers the service period")
    for index, span in enumerate(spans):
        label = f"rate card span {index} ({span.card.label})"
        _check_minute(span.card.effective_from_ms, f"rate card {span.card.label} effective_from")
        _check_minute(span.start_ms, f"{label} start")
        _check_minute(span.end_ms, f"{label} end")
        if span.end_ms <= span.start_ms:
            raise PricingError(f"{label} is empty or reversed: {ms_to_iso(span.start_ms)}..{ms_to_iso(span.end_ms)}")
        if span.start_ms < span.card.effective_from_ms:
            raise PricingError(
                f"{label} starts at {ms_to_iso(span.start_ms)}, before the card is effective "
                f"({ms_to_iso(span.card.effective_from_ms)})"
            )
        if index and span.start_ms != spans[index - 1].end_ms:
            raise PricingError(f"{label} starts at {ms_to_iso(span.start_ms)}, not where span {index - 1} ends")
    if spans[0].start_ms > start_ms or spans[-1].end_ms < end_ms:
        raise PricingError(
            f"the rate card spans ({ms_to_iso(spans[0].start_ms)}..{ms_to_iso(spans[-1].end_ms)}) do not cover "
            f"the service period {ms_to_iso(start_ms)}..{ms_to_iso(end_ms)}"
        )
    out: list[PricingSegment] = []
    for index, span in enumerate(spans):
        lo, hi = max(start_ms, span.start_ms), min(end_ms, span.end_ms)
        if lo >= hi:
            continue
        for piece in span.card.calendar.segments(lo, hi):
            _check_minute(piece.start_ms, f"time-of-use boundary of {span.card.label} ({span.card.calendar.timezone})")
            out.append(PricingSegment(piece.start_ms, piece.end_ms, index, piece.period))
    return out


def segment_at(segments: Sequence[PricingSegment], ts_ms: int) -> int:
    """The index of the segment containing `ts_ms`, or -1 if none does (segments in order)."""
    index = bisect_right([segment.start_ms for segment in segments], ts_ms) - 1
    if index < 0 or ts_ms >= segments[index].end_ms:
        return -1
    return index
