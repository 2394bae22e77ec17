"""The Stripe webhook endpoint (FastAPI): verify the signature over the raw body, apply the event once.

`POST /stripe/webhook` answers 400 with a JSON error for a missing or bad signature (nothing is
applied), and 200 with what the event did otherwise, including "duplicate" for a redelivery.
Serve it with `wattmeter-billing stripe webhook --port P` (uvicorn).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from billing.ledger.db import Ledger
from billing.payments.events import BadSignature, apply_event, verify


def webhook_router(ledger: Ledger, secret: str) -> APIRouter:
    router = APIRouter()

    @router.post("/stripe/webhook")
    async def stripe_webhook(request: Request) -> JSONResponse:
        payload = await request.body()
        try:
            event = verify(payload, request.headers.get("stripe-signature"), secret)
        except BadSignature as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        applied = await run_in_threadpool(apply_event, ledger, event, "webhook")
        return JSONResponse({"event": applied.event_id, "type": applied.type, "outcome": applied.outcome})

    return router


def webhook_app(ledger: Ledger, secret: str) -> FastAPI:
    app = FastAPI(title="wattmeter Stripe webhook", docs_url=None, redoc_url=None)
    app.include_router(webhook_router(ledger, secret))
    return app
