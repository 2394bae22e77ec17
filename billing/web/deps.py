"""FastAPI dependencies: the ledger and usage root of the app, and the request's principal.

A key comes as `Authorization: Bearer wm_...` (the API) or in the `wattmeter_key` cookie the
portal's login form sets (HttpOnly, SameSite=Strict). Errors are JSON `{"error": "..."}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse

from billing.ledger.db import Ledger
from billing.web.auth import AuthError, Forbidden, NotFound, Principal, authenticate

COOKIE = "wattmeter_key"


@dataclass(frozen=True)
class WebContext:
    ledger: Ledger
    usage_root: Path


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.wattmeter
    return ctx


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def principal(request: Request) -> Principal:
    """The request's principal; AuthError (401) without a valid key."""
    ctx = context(request)
    with ctx.ledger.transaction() as session:
        return authenticate(session, presented_key(request))


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def install_error_handlers(app: object) -> None:
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    assert isinstance(app, FastAPI)

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        response = error_response(401, str(exc))
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return error_response(403, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return error_response(422, f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request")
