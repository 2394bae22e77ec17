"""The one runner of every `wattmeter-billing` subcommand: it opens the ledger (unless the caller
hands one in), runs the command, closes the ledger, and maps what a user can meet to exit 2 with
one line on stderr, in one place:

- every `BillingError` (billing.common.errors: each package's errors subclass it);
- a file that cannot be read or written (`OSError`);
- a database refusal or a lost connection (`SQLAlchemyError`: its first line).

Anything else is a bug and keeps its traceback. The command returns its own status (0, or 1 for
"ran, found something", such as an unexplained reconciliation).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from billing.common.errors import BillingError
from billing.ledger.db import Ledger

EXIT_BAD_INPUT = 2


def first_line(exc: BaseException) -> str:
    """The error's message as one line (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_command(prog: str, db_url: str | None, command: Callable[[Ledger], int], ledger: Ledger | None = None) -> int:
    """`command(ledger)`'s exit status; `ledger` None opens the one at `db_url` (or
    $WATTMETER_BILLING_DB) and closes it afterwards."""
    owned = ledger is None
    try:
        if ledger is None:
            ledger = Ledger(db_url)
        return command(ledger)
    except (BillingError, OSError) as exc:
        print(f"{prog}: {first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SQLAlchemyError as exc:  # e.g. a trigger refusing a change, a lost connection
        reason = first_line(getattr(exc, "orig", None) or exc)
        print(f"{prog}: database error: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if owned and ledger is not None:
            ledger.dispose()
