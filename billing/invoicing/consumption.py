"""Pure: which offset ranges of the usage Parquet are still unconsumed for a tenant's period.

Every invoice (and credit note) records the ranges it counted for each (tenant, service
period). Those ranges never overlap, so every usage record counts on exactly one invoice.
What is left up to the current cut-off is the gaps between them, per partition.
"""

from __future__ import annotations

from collections.abc import Iterable

from billing.usage.reader import Cutoff, OffsetRange


def unconsumed(taken: Iterable[OffsetRange], cutoff: Cutoff) -> tuple[OffsetRange, ...]:
    """The gaps in [0, cutoff[p]) of every partition that no range in `taken` covers."""
    gaps: dict[int, list[tuple[int, int]]] = {}
    taken = list(taken)
    for partition, limit in cutoff.items():
        spans = sorted(
            (r.start.get(partition, 0), r.end.get(partition, 0))
            for r in taken
            if r.end.get(partition, 0) > r.start.get(partition, 0)
        )
        position, free = 0, []
        for lo, hi in spans:
            if lo > position:
                free.append((position, min(lo, limit)))
            position = max(position, hi)
        if position < limit:
            free.append((position, limit))
        gaps[partition] = [(lo, hi) for lo, hi in free if lo < hi]
    count = max((len(g) for g in gaps.values()), default=0)
    ranges = []
    for index in range(count):
        start = {p: g[index][0] for p, g in gaps.items() if index < len(g)}
        end = {p: g[index][1] for p, g in gaps.items() if index < len(g)}
        ranges.append(OffsetRange(start, end))
    return tuple(ranges)


def overlaps(a: OffsetRange, b: OffsetRange) -> bool:
    for partition in set(a.end) & set(b.end):
        if max(a.start.get(partition, 0), b.start.get(partition, 0)) < min(a.end[partition], b.end[partition]):
            return True
    return False
