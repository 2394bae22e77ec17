"""Pure: what a tenant's id, name and time zone may be, the one place these rules live.

- **id**: `[a-z0-9][a-z0-9._-]{0,63}` — lower-case letters, digits, `.`, `_`, `-`, starting with a
  letter or digit, 1 to 64 characters. It appears in API paths and file names, in CSV cells and on
  terminals, so it holds nothing that needs escaping anywhere: no `/`, no space, no formula start.
- **name**: stripped of surrounding whitespace, then 1 to 200 characters, every one printable
  (`str.isprintable`: letters, marks, digits, punctuation, symbols and the plain space). That
  refuses control characters (terminal escape codes, tabs, newlines) and every format character,
  among them the bidi controls U+202A-U+202E, U+2066-U+2069, U+200E, U+200F and U+061C, which
  would reorder what a statement shows.
- **time zone**: an IANA zone name that `zoneinfo.available_timezones()` lists, or `UTC`; never
  `localtime`, `posixrules` or `Factory`, which name the host's setting or no zone at all.

`upsert_tenant` (billing.ledger.store) applies them wherever a tenant is created or changed;
`printable` makes text written before these rules safe to print on a terminal.
"""

from __future__ import annotations

import re
from functools import lru_cache
from zoneinfo import available_timezones

from billing.ledger.errors import InvalidTenant

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
NAME_MAX = 200
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
_SHOWN = 40  # characters of a refused value that a message quotes


def _shown(value: str) -> str:
    """`value` for a one-line message: repr (escapes every control character), cut to a length."""
    return repr(value) if len(value) <= _SHOWN else repr(value[:_SHOWN]) + f"... ({len(value)} characters)"


def check_tenant_id(value: str) -> str:
    """`value` if it is a valid tenant id (see the module docstring); InvalidTenant otherwise."""
    if not TENANT_ID.fullmatch(value):
        raise InvalidTenant(
            f"tenant id {_shown(value)} is not valid: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )
    return value


def check_tenant_name(value: str) -> str:
    """The stripped `value` if it is a valid tenant name (see the module docstring); InvalidTenant otherwise."""
    name = value.strip()
    if not name:
        raise InvalidTenant("tenant name is blank")
    if len(name) > NAME_MAX:
        raise InvalidTenant(f"tenant name is {len(name)} characters long, more than {NAME_MAX}")
    bad = next((c for c in name if c in BIDI_CONTROLS or not c.isprintable()), None)
    if bad is not None:
        kind = "a bidi control" if bad in BIDI_CONTROLS else "a control or invisible"
        raise InvalidTenant(f"tenant name {_shown(name)} holds {kind} character U+{ord(bad):04X}")
    return name


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones() - NOT_ZONES) | {"UTC"}


def check_timezone(value: str) -> str:
    """`value` if it is an IANA zone name (see the module docstring); InvalidTenant otherwise."""
    if value not in _zones():
        raise InvalidTenant(f"time zone {_shown(value)} is not an IANA zone name (such as Europe/Berlin or UTC)")
    return value


def printable(text: str) -> str:
    """`text` with every non-printable character (escape codes, bidi controls) written as its
    Python escape (`\\x1b`, `\\u202e`), so that printing it cannot drive a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
