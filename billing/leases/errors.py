"""Named errors of the leases domain: each message is one line a person can act on.

They subclass the ledger's errors (`NotFound`, `Conflict`, `LedgerError`), so a caller (the
CLI, later the HTTP API) can map a whole family to one status without knowing each one.
"""

from __future__ import annotations

from billing.ledger.errors import Conflict, LedgerError, NotFound


class LeaseError(LedgerError):
    """Any lease operation that cannot be done as asked."""


class InvalidLease(LeaseError):
    """A lease that cannot exist: unknown plan, end not after start, negative time, empty id."""


class UnknownTenant(NotFound, LeaseError):
    """The lease names a tenant the ledger does not hold."""


class UnknownLease(NotFound, LeaseError):
    """No lease has this id."""


class LeaseOverlap(Conflict, LeaseError):
    """The lease would overlap another lease on the same GPU."""


class LeaseAlreadyEnded(Conflict, LeaseError):
    """The lease already has a different end."""


class LeaseIdConflict(Conflict, LeaseError):
    """A lease with this id exists with different fields."""


class LeaseFileError(LeaseError):
    """A lease file that cannot be read: the message starts with `file:line:`."""


class InvalidHorizon(LeaseError):
    """The publishing horizon is not a number, or shorter than the agents' spool age limit."""


class PublishFailed(LeaseError):
    """`gpu.leases` did not acknowledge a timeline; the outbox rows stay pending."""


class InvalidOffer(LeaseError):
    """A capacity offer that cannot exist: no GPUs, an empty window, an unknown plan, a negative notice."""


class UnknownOffer(NotFound, LeaseError):
    """No capacity offer has this id."""


class OfferConflict(Conflict, LeaseError):
    """An offer with this id exists with different fields, or is closed."""


class OutsideOffer(Conflict, LeaseError):
    """A lease on a valley or interruptible plan that no open offer covers."""
