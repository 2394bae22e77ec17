"""The JSON API: usage, invoices, statements, leases (helper A fills this in)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
