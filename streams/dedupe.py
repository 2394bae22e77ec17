"""Pure: has this (node, boot, seq) been seen? Bounded, exact within its horizon.

Per boot it keeps the highest seq seen (`hwm`) and the seqs below it, within
`horizon`, that have not arrived yet (`missing`). Kafka keeps per-node order, so in
steady state `missing` is empty and the state is one integer; an agent's spool
replay after a crash re-sends seqs at or below the high-water mark, which are
recognised as duplicates. The horizon is how far back a sample may still arrive
out of order (the worker derives it from the allowed lateness); older seqs that
never came are given up on, and anything that old is refused as late downstream.
"""

from __future__ import annotations

from typing import Any

MAX_BOOTS = 8  # boots remembered per node


def seen_before(state: dict[str, dict[str, Any]], boot_id: str, seq: int, horizon: int = 64) -> bool:
    """Record (boot_id, seq) in `state` (a JSON-able dict); True if it was a duplicate."""
    boot = state.get(boot_id)
    if boot is None:
        if len(state) >= MAX_BOOTS:
            del state[min(state, key=lambda b: state[b]["order"])]
        order = max((b["order"] for b in state.values()), default=-1) + 1
        boot = state[boot_id] = {"hwm": -1, "missing": [], "order": order}
    if seq > boot["hwm"]:
        floor = seq - horizon
        kept = [s for s in boot["missing"] if s >= floor]
        kept.extend(range(max(boot["hwm"] + 1, floor), seq))
        boot["missing"] = kept
        boot["hwm"] = seq
        return False
    if seq in boot["missing"]:
        boot["missing"].remove(seq)
        return False
    return True
