"""FastAPI dependencies: the ledger and usage root of the app, and the request's principal; the
app's error format and the security headers of every response.

A key comes as `Authorization: Bearer wm_...` (the API) or in the `wattmeter_key` cookie the
portal's login form sets (HttpOnly, SameSite=Strict). Errors are JSON `{"error": "..."}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing.ledger.db import Ledger
from billing.web.auth import AuthError, Forbidden, NotFound, Principal, authenticate
from lake.store import LakeLocation

COOKIE = "wattmeter_key"
_PHRASES = {status.value: status.phrase for status in HTTPStatus}

# The portal runs no script and loads only its own stylesheet and images: nothing else, from nowhere else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def inline_document_policy(nonce: str) -> str:
    """The policy of a self-contained document served inline (the statement's HTML): its one `<style>`
    element (by nonce) and data: images, nothing else; not even a form."""
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src data:; form-action 'none'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


class SecurityHeaders:
    """ASGI middleware around the whole app (outside Starlette's server-error handler, so a 500 has them
    too): `SECURITY_HEADERS` on every HTTP response, a header the response set itself (the statement's
    own policy) kept as it is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass(frozen=True)
class WebContext:
    ledger: Ledger
    usage_root: LakeLocation


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


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def one_line(detail: object, fallback: str, *, lower: bool = True) -> str:
    """The first line of an error's detail (at most 200 characters), by default lower-cased at the
    start ("Not Found" -> "not found")."""
    lines = str(detail).splitlines() if detail else []
    text = lines[0].strip()[:200] if lines and lines[0].strip() else fallback
    return text[:1].lower() + text[1:] if lower else text


def install_error_handlers(app: object) -> None:
    """Every error the app answers is `{"error": "one line"}`: ours (401, 403, 404, 422), Starlette's
    (a path no route matches: 404; a method a route does not take: 405, with Allow; a body that is not
    JSON: 400) and an unexpected exception (500, no trace). The portal's pages answer their errors
    with their own HTML page before any of these is reached."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

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
        message = one_line(first.get("msg"), "invalid request", lower=False)
        return error_response(422, f"{where}: {message}" if where else "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = _PHRASES.get(exc.status_code, "")
        message = phrase.lower() if exc.detail == phrase else one_line(exc.detail, "error")  # "Not Found": "not found"
        return error_response(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:  # logged by uvicorn, never shown
        return error_response(500, "internal error")
