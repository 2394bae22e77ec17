"""The wattmeter web app (FastAPI, served by uvicorn): the JSON API under /api/v1 (OpenAPI at
/api/v1/openapi.json), the tenant portal, the finance and operator pages, and the Stripe webhook.

`wattmeter-billing serve --port 8400` runs it over the billing database and the usage Parquet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from billing.ledger.db import Ledger
from billing.web.deps import WebContext, install_error_handlers

STATIC = Path(__file__).parent / "portal" / "static"


def create_app(ledger: Ledger, usage_root: Path, webhook_secret: str | None = None) -> FastAPI:
    from billing.web import api, reports_api
    from billing.web.portal import operator, pages

    app = FastAPI(title="wattmeter", version="1", openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs",
                  redoc_url=None)  # fmt: skip
    app.state.wattmeter = WebContext(ledger, Path(usage_root))
    install_error_handlers(app)
    app.include_router(api.router, prefix="/api/v1")
    app.include_router(reports_api.router, prefix="/api/v1")
    app.include_router(pages.router)
    app.include_router(operator.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if webhook_secret:
        from billing.payments.webhook import webhook_router

        app.include_router(webhook_router(ledger, webhook_secret), include_in_schema=False)
    return app
