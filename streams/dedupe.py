"""Pure: has this (node, boot, seq) been seen? Bounded, exact within its horizon.

Per boot it keeps the highest seq seen and the seqs skipped below it that have not
arrived yet. Kafka keeps per-node order, so in the normal case `missing` is empty
and the state is two integers; an agent's spool replay after a crash re-sends seqs
at or below the high-water mark, which are recognised as duplicates.
"""
from __future__ import annotations

MAX_MISSING = 10_000  # skipped seqs remembered per boot; older ones are given up on
MAX_BOOTS = 8  # boots remembered per node


def seen_before(state: dict, boot_id: str, seq: int) -> bool:
    """Record (boot_id, seq) in `state` (a JSON-able dict); True if it was a duplicate."""
    boot = state.get(boot_id)
    if boot is None:
        if len(state) >= MAX_BOOTS:
            oldest = min(state, key=lambda b: state[b]["order"])
            del state[oldest]
        order = max((b["order"] for b in state.values()), default=-1) + 1
        state[boot_id] = {"hwm": seq, "missing": [], "order": order}
        return False
    if seq > boot["hwm"]:
        boot["missing"].extend(range(max(boot["hwm"] + 1, seq - MAX_MISSING), seq))
        if len(boot["missing"]) > MAX_MISSING:
            del boot["missing"][: len(boot["missing"]) - MAX_MISSING]
        boot["hwm"] = seq
        return False
    if seq in boot["missing"]:
        boot["missing"].remove(seq)
        return False
    return True
