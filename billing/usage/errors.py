"""Named errors of the usage adapter."""

from __future__ import annotations


class UsageDataError(RuntimeError):
    """The usage folder is missing, or a file in it cannot be read."""
