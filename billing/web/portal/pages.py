"""The tenant portal: login with a key, usage, per-GPU table, invoices, statements (helper B fills this in)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
