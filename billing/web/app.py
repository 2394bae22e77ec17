"""The wattmeter web app (FastAPI, served by uvicorn): the JSON API under /api/v1 (OpenAPI at
/api/v1/openapi.json), the tenant portal, the finance and operator pages, and the Stripe webhook.

`wattmeter-billing serve --port 8400` runs it over the billing database and the usage Parquet.

Every response carries `billing.web.deps.SECURITY_HEADERS` (nosniff, a strict CSP, no framing). A
path with a trailing slash is not redirected (a redirect would be built from the request's Host):
it is a 404 like any path no route matches. There is no Swagger UI (it needs scripts from a CDN,
which the CSP refuses); the OpenAPI document is at /api/v1/openapi.json.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp

from billing.ledger.db import Ledger
from billing.web.deps import SecurityHeaders, WebContext, install_error_handlers
from lake.store import LakeLocation

STATIC = Path(__file__).parent / "portal" / "static"


class WattmeterApp(FastAPI):
    """FastAPI with `SecurityHeaders` outermost: around Starlette's own error middleware too."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def create_app(ledger: Ledger, usage_root: LakeLocation, webhook_secret: str | None = None) -> FastAPI:
    from billing.web import api, market_api, reports_api, spend_api
    from billing.web.portal import operator, pages

    app = WattmeterApp(
        title="wattmeter",
        version="1",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.wattmeter = WebContext(ledger, usage_root)
    install_error_handlers(app)
    app.include_router(api.router, prefix="/api/v1")
    app.include_router(reports_api.router, prefix="/api/v1")
    app.include_router(market_api.router, prefix="/api/v1")
    app.include_router(spend_api.router, prefix="/api/v1")
    app.include_router(pages.router)
    app.include_router(operator.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if webhook_secret:
        from billing.payments.webhook import webhook_router

        app.include_router(webhook_router(ledger, webhook_secret), include_in_schema=False)
    return app
