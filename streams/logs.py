# TRANSITIONAL re-export for issue 16; removed when the callers move
"""Moved: the service logging is schemas.logs (shared with the agent), the broker watch
streams.broker_watch. tests/deploy/test_deploy_files.py still imports these two from here."""

from schemas.logs import log_options
from streams.broker_watch import parse_bootstrap

__all__ = ["log_options", "parse_bootstrap"]
