"""The JSON API of the reports: the fleet yield report and the reconciliation (helper C fills this in)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
