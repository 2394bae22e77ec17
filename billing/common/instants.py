"""Instants as text: the one place where epoch ms become ISO 8601 and back. UTC inside; a tenant's
zone only where a caller asks for local time. Exact: integer ms, never a float of seconds."""

from __future__ import annotations

from schemas.units import ms_to_datetime


def ms_to_iso(ts_ms: int) -> str:
    """A UTC timestamp such as 2026-11-15T00:00:00Z (milliseconds shown only when there are any)."""
    text = ms_to_datetime(ts_ms).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ts_ms % 1000:03d}Z" if ts_ms % 1000 else f"{text}Z"


def ms_to_iso_millis(ts_ms: int) -> str:
    """A UTC timestamp that always shows milliseconds, such as 2026-11-15T00:00:00.000Z (the API's form)."""
    return ms_to_datetime(ts_ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
