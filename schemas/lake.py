"""The usage lake's layout: the contract between the sink that writes it and billing that reads it.

    <root>/date=YYYY-MM-DD/<topic>-p<partition>-<first offset>-<last offset>.parquet
    <root>/_manifests/<topic>-<partition>.json        {"next_offset": N}

A file holds the records of source offsets [first, last] of one partition whose window starts
on that UTC day; the offsets are 20-digit zero-padded, so names sort in offset order. Pure: no
pyarrow, no file system.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from schemas.units import datetime_to_ms, ms_to_datetime

FILE_RE = re.compile(r"^(?P<topic>.+)-p(?P<partition>\d+)-(?P<first>\d{20})-(?P<last>\d{20})\.parquet$")
DATA_GLOB = "date=*/*.parquet"
DATE_FOLDER_RE = re.compile(r"^date=(\d{4})-(\d{2})-(\d{2})$")
MANIFESTS_DIR = "_manifests"


def data_file_name(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    """The name of the file that holds offsets [first_offset, last_offset] of `partition`."""
    return f"{topic}-p{partition}-{first_offset:020d}-{last_offset:020d}.parquet"


def date_folder(window_start_ms: int) -> str:
    """The hive partition folder of a record whose window starts at `window_start_ms` (UTC day)."""
    return f"date={ms_to_datetime(window_start_ms).strftime('%Y-%m-%d')}"


def folder_day_ms(folder: str) -> int | None:
    """The UTC day (ms) a `date=YYYY-MM-DD` folder name stands for, or None for any other name."""
    match = DATE_FOLDER_RE.match(folder)
    if match is None:
        return None
    try:
        year, month, day = (int(part) for part in match.groups())
        start = datetime(year, month, day, tzinfo=timezone.utc)
    except ValueError:  # date=2026-13-45
        return None
    return datetime_to_ms(start)


def manifest_name(topic: str, partition: int) -> str:
    """The manifest file of `partition`, inside MANIFESTS_DIR."""
    return f"{topic}-{partition}.json"
