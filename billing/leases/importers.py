"""Lease files from an operator's scheduler: CSV and JSON lines, to `LeaseRow`s.

CSV has a header row naming its columns (any order): `tenant_id`, `gpu_uuid`, `start`
required; `lease_id`, `end`, `plan` optional (an empty cell is the default: a
deterministic id, an open-ended lease, `on_demand`). JSON lines hold one object per line
with the same keys (`start_ms`/`end_ms` are accepted for `start`/`end`); blank lines are
skipped in both.

Times are ISO 8601 (`2026-11-01T06:00:00Z`, `...+01:00`; no offset means UTC; a bare date
is midnight UTC) or integer milliseconds since the epoch, in the years 1970-9999. Every row
carries its file and line, and every error starts with `file:line:`.

Parsing here only checks shapes; what a row means (known tenant and plan, no overlap) is
checked by `billing.leases.service.import_leases`, which names the same `file:line`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from billing.leases.errors import LeaseFileError
from schemas.units import check_instant_ms, datetime_to_ms

FORMATS = ("csv", "jsonl")
REQUIRED = ("tenant_id", "gpu_uuid", "start")
OPTIONAL = ("lease_id", "end", "plan")
_ALIASES = {"start_ms": "start", "end_ms": "end"}
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One lease as a file states it, before the ledger's checks."""

    tenant_id: str
    gpu_uuid: str
    start_ms: int
    end_ms: int | None = None
    plan: str | None = None  # None: on_demand
    lease_id: str | None = None  # None: the deterministic id of (tenant, GPU, start)
    source: str = "<rows>"
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def parse_time(value: Any) -> int:
    """Epoch ms from integer ms or an ISO 8601 string (no offset: UTC); ValueError says why not.

    The one parser of times that people and files give billing (the CLI's options, lease files):
    a bool is not a time, and an instant outside `schemas.units.check_instant_ms`'s bound (years
    1970-9999) is refused here, before anything is written."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a time, got {json.dumps(value)}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            ms = int(text)
        else:
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            try:
                instant = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an ISO 8601 time (e.g. 2026-11-01T06:00:00Z) or integer ms"
                ) from None
            if instant.tzinfo is None:
                instant = instant.replace(tzinfo=timezone.utc)
            if instant.microsecond % 1000:
                raise ValueError(f"{value!r} is finer than a millisecond")
            ms = datetime_to_ms(instant)
    else:
        raise ValueError(f"expected a time, got {json.dumps(value)}")
    as_text = isinstance(value, str) and not _INTEGER.fullmatch(value.strip())
    return check_instant_ms(ms, f"time {value!r} =" if as_text else "time")


def _row(fields: dict[str, Any], source: str, line: int) -> LeaseRow:
    def text(name: str, required: bool) -> str | None:
        value = fields.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise LeaseFileError(f"{source}:{line}: {name} is missing")
            return None
        if not isinstance(value, str):
            raise LeaseFileError(f"{source}:{line}: {name} must be a string, got {json.dumps(value)}")
        return value.strip()

    def time(name: str, required: bool) -> int | None:
        value = fields.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise LeaseFileError(f"{source}:{line}: {name} is missing")
            return None
        try:
            return parse_time(value)
        except ValueError as exc:
            raise LeaseFileError(f"{source}:{line}: {name}: {exc}") from None

    tenant_id, gpu_uuid, start_ms = text("tenant_id", True), text("gpu_uuid", True), time("start", True)
    assert tenant_id is not None and gpu_uuid is not None and start_ms is not None
    return LeaseRow(
        tenant_id=tenant_id,
        gpu_uuid=gpu_uuid,
        start_ms=start_ms,
        end_ms=time("end", False),
        plan=text("plan", False),
        lease_id=text("lease_id", False),
        source=source,
        line=line,
    )


def _columns(names: list[str], source: str, line: int) -> list[str]:
    columns = [_ALIASES.get(name.strip(), name.strip()) for name in names]
    unknown = [name for name in columns if name not in REQUIRED + OPTIONAL]
    if unknown:
        known = ", ".join(REQUIRED + OPTIONAL)
        raise LeaseFileError(f"{source}:{line}: unknown column(s) {', '.join(map(repr, unknown))}; known: {known}")
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise LeaseFileError(f"{source}:{line}: column(s) {', '.join(duplicated)} appear twice")
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise LeaseFileError(f"{source}:{line}: missing column(s) {', '.join(missing)}")
    return columns


def parse_csv(text: str, source: str = "<csv>") -> list[LeaseRow]:
    """Rows of a CSV lease file with a header line."""
    reader = csv.reader(io.StringIO(text))
    columns: list[str] | None = None
    rows: list[LeaseRow] = []
    try:
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if columns is None:
                columns = _columns(cells, source, line)
                continue
            if len(cells) != len(columns):
                raise LeaseFileError(f"{source}:{line}: {len(cells)} cells, the header has {len(columns)}")
            rows.append(_row(dict(zip(columns, cells)), source, line))
    except csv.Error as exc:
        raise LeaseFileError(f"{source}:{reader.line_num}: {exc}") from None
    if columns is None:
        raise LeaseFileError(f"{source}:1: empty file: expected a header ({', '.join(REQUIRED + OPTIONAL)})")
    return rows


def parse_jsonl(text: str, source: str = "<jsonl>") -> list[LeaseRow]:
    """Rows of a JSON-lines lease file: one object per line."""
    rows: list[LeaseRow] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise LeaseFileError(f"{source}:{line}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise LeaseFileError(f"{source}:{line}: expected a JSON object, got {type(data).__name__}")
        columns = _columns(list(data), source, line)
        rows.append(_row(dict(zip(columns, data.values())), source, line))
    return rows


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise LeaseFileError(f"{path}: cannot tell the format from the extension {suffix!r}: pass --format csv|jsonl")


def read_lease_file(path: Path, fmt: str | None = None) -> list[LeaseRow]:
    """The rows of a lease file; the format comes from `fmt` or the extension."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise LeaseFileError(f"{path}: unknown format {fmt!r}: use csv or jsonl")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LeaseFileError(f"{path}: cannot read: {exc}") from None
    return parse_csv(text, str(path)) if fmt == "csv" else parse_jsonl(text, str(path))
