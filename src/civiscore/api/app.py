"""The FastAPI application, built by a factory (no import-time singletons)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from civiscore.api import errors
from civiscore.api.deps import RateLimiter
from civiscore.api.routes import admin, appeals, audit, eligibility, me, records
from civiscore.service import Service
from civiscore.settings import Settings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DESCRIPTION = """civiscore as a service, under the rule of law.

Each party has one key and one role: **department** (submit its own records), **service**
(ask eligibility for its own services: allowed or denied, a reason code and the adverse-action
notice, never a score), **subject** (read its own record, who checked it, and appeal),
**reviewer** (decide appeals), **auditor** (verify the log, aggregate statistics), **admin**
(keys, rulebooks, the stop switch). Send the key as `Authorization: Bearer <key>`.

Every error has one shape: `{"error": {"code", "message", "field"}}`."""


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0
        refused = False

        async def limited() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited, tracking_send)
        if refused and not started:
            await _too_large(send, self.limit)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "too_large",
                "message": f"request body over {limit} bytes; send smaller batches",
                "field": None,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _refresh_periodically(service: Service) -> None:
    while True:
        await asyncio.sleep(service.settings.refresh_seconds)
        try:
            await run_in_threadpool(service.refresh)
        except Exception:  # the decisions served so far stay; try again next period
            log.exception("periodic refresh of served decisions failed")


def create_app(service: Service | None, *, refresh_on_start: bool = True) -> FastAPI:
    """The API over an opened :class:`Service` (None: only to render the OpenAPI document)."""
    settings = service.settings if service is not None else Settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if service is None:
            yield
            return
        if refresh_on_start and service.index is None:
            service.refresh()
        # Submissions through the API refresh the subjects they touch at once; this catches
        # the rest: records ingested from files beside the server, and band benefits that
        # change as records age.
        task = asyncio.create_task(_refresh_periodically(service))
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(
        title="civiscore",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    errors.install(app)
    for module in (records, eligibility, me, appeals, audit, admin):
        app.include_router(module.router)

    if service is not None:
        from civiscore.web import pages

        pages.install(app)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness; no key needed, no data."""
        return {"status": "ok"}

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def api_spec() -> dict[str, Any]:
    """The OpenAPI document, as served at /openapi.json."""
    return create_app(None).openapi()
