"""Attribution hints from the host: which tenant or pod the host itself thinks holds a GPU.

Leases on `gpu.leases` stay the billing truth; hints travel with the samples so that
reconciliation can spot a GPU used by someone the lease system does not know about.
Source here: a JSON file `{gpu_uuid: hint}` written by the rental system (re-read when
it changes). The kubelet pod-resources socket needs a gRPC client, which the agent
does not carry yet.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class HintsFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mtime_ns: int | None = None
        self._hints: dict[str, str] = {}

    def current(self) -> dict[str, str]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._mtime_ns:
            self._mtime_ns = mtime
            try:
                data = json.loads(self.path.read_text())
                self._hints = {str(k): str(v)[:256] for k, v in data.items() if v} if isinstance(data, dict) else {}
            except (ValueError, OSError) as exc:
                log.warning("ignoring hints file %s: %s", self.path, exc)
                self._hints = {}
        return self._hints
