"""The Stripe connection: the official `stripe` library's client, configured from the environment,
and the one place every call goes through (retries with backoff, the cause of each failure, and
the test hook that kills the process between two calls).

Environment:
- `WATTMETER_STRIPE_API_KEY`    the secret key (`sk_test_...` against stripe-mock or localstripe)
- `WATTMETER_STRIPE_API_BASE`   e.g. `http://127.0.0.1:12111` (default: Stripe itself)
- `WATTMETER_STRIPE_RETRIES`    attempts after the first for a network error, 409, 429 or 5xx (default 5)
- `WATTMETER_STRIPE_BACKOFF_S`  first backoff, doubled each retry, capped at 30 s (default 0.5)
- `WATTMETER_STRIPE_WEBHOOK_SECRET`  the endpoint's signing secret (`whsec_...`)

Test hook: `WATTMETER_FAULT=stripe-call:N` ends the process (exit 137, as a kill would) right
after the N-th creating call (POST) has been answered by Stripe and before wattmeter records it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import stripe

from billing.payments.errors import StripeCallFailed, StripeConfigError

T = TypeVar("T")
FAULT_ENV = "WATTMETER_FAULT"
Notice = Callable[[str], None]


@dataclass(frozen=True)
class StripeSettings:
    api_key: str
    api_base: str | None = None
    retries: int = 5
    backoff_s: float = 0.5
    webhook_secret: str | None = None

    @classmethod
    def from_env(cls, api_base: str | None = None, api_key: str | None = None) -> StripeSettings:
        key = api_key or os.environ.get("WATTMETER_STRIPE_API_KEY", "")
        if not key:
            raise StripeConfigError("no Stripe API key: set WATTMETER_STRIPE_API_KEY (sk_test_... for a test peer)")
        base = api_base or os.environ.get("WATTMETER_STRIPE_API_BASE") or None
        if base is not None and not base.startswith(("http://", "https://")):
            raise StripeConfigError(f"WATTMETER_STRIPE_API_BASE must be an http(s) URL, not {base!r}")
        try:
            retries = int(os.environ.get("WATTMETER_STRIPE_RETRIES", "5"))
            backoff = float(os.environ.get("WATTMETER_STRIPE_BACKOFF_S", "0.5"))
        except ValueError as exc:
            raise StripeConfigError(f"bad Stripe retry setting: {exc}") from None
        secret = os.environ.get("WATTMETER_STRIPE_WEBHOOK_SECRET") or None
        return cls(key, base.rstrip("/") if base else None, retries, backoff, secret)


def cause(exc: Exception) -> str:
    """One line naming what went wrong in a Stripe call."""
    if isinstance(exc, stripe.APIConnectionError):
        return f"network: {str(exc.user_message or exc).splitlines()[0]}"
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or "?"
        message = (exc.user_message or str(exc) or type(exc).__name__).splitlines()[0]
        return f"HTTP {status} {type(exc).__name__}: {message}"
    return f"{type(exc).__name__}: {exc}"


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, stripe.APIConnectionError):
        return True
    if isinstance(exc, stripe.StripeError):
        return exc.http_status in (409, 429) or (exc.http_status or 0) >= 500
    return False


@dataclass
class Stripe:
    """A configured client plus the call discipline. `notice` hears every failure as it happens."""

    settings: StripeSettings
    notice: Notice = field(default=lambda line: None)
    calls: int = 0  # creating calls answered so far (for the fault hook)
    client: Any = field(init=False)

    def __post_init__(self) -> None:
        base = {"api": self.settings.api_base} if self.settings.api_base else None
        # the library's own retries are off: one retry loop, here, with the cause of each failure shown
        self.client = stripe.StripeClient(self.settings.api_key, base_addresses=base, max_network_retries=0)  # type: ignore[arg-type]
        fault = os.environ.get(FAULT_ENV, "")
        self._kill_after = int(fault.split(":", 1)[1]) if fault.startswith("stripe-call:") else None

    def call(self, what: str, fn: Callable[..., T], *args: Any, creates: bool = False, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` with retries on network errors, 409, 429 and 5xx. A creating call keeps its
        idempotency key (in kwargs' options) on every attempt, so Stripe answers a replay with the first result."""
        delay = self.settings.backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn(*args, **kwargs)
                break
            except Exception as exc:  # noqa: BLE001 -- classified just below
                if not isinstance(exc, stripe.StripeError) or not _retryable(exc) or attempt > self.settings.retries:
                    raise StripeCallFailed(f"{what}: {cause(exc)} (after {attempt} attempt(s))") from None
                self.notice(f"{what}: {cause(exc)}; retry {attempt}/{self.settings.retries} in {delay:.2f} s")
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        if creates:
            self.calls += 1
            if self._kill_after is not None and self.calls >= self._kill_after:
                os._exit(137)
        return result

    def list_all(self, what: str, service: Any, params: dict[str, Any]) -> list[Any]:
        """Every object of a list endpoint, page by page (`starting_after`), each page retried."""
        out: list[Any] = []
        page_params = dict(params, limit=100)
        while True:
            page = self.call(what, service.list, params=page_params)
            out.extend(page.data)
            if not page.has_more or not page.data:
                return out
            page_params = dict(page_params, starting_after=page.data[-1].id)
