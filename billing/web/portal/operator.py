"""The operator's and finance's pages: the yield report and the month at a glance (helper C fills this in)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
