"""Dependencies: the service, the authenticated party, its role, and its rate limit."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from civiscore.api.errors import ApiError
from civiscore.api.keys import Party
from civiscore.service import Service

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")


# The dependencies are coroutines: FastAPI runs a plain function in the thread pool, and four
# hops to a thread and back per request (key, role, service, endpoint) cost more than the
# eligibility decision itself. Nothing here blocks, except what is sent to the pool.


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


class RateLimiter:
    """A token bucket per key: ``rate`` tokens a second, up to ``burst``."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        """0 when allowed, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[who] = (tokens - 1, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1 - tokens) / self.rate


async def get_party(
    request: Request,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Party:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(
            401,
            "unauthenticated",
            "send your key as `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    cached, party = service.keys.cached(credentials.credentials)
    if not cached:
        party = await run_in_threadpool(service.keys.authenticate, credentials.credentials)
    if party is None:
        raise ApiError(
            401,
            "unauthenticated",
            "unknown or revoked key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    limiter: RateLimiter = request.app.state.limiter
    wait = limiter.take(party.name)
    if wait > 0:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests for key {party.name!r}; retry in {wait:.2f} s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return party


PartyDep = Annotated[Party, Depends(get_party)]


def role(*roles: str) -> Callable[[Request, ServiceDep, PartyDep], Awaitable[Party]]:
    """A dependency admitting only ``roles``; a refusal is logged before it is returned."""

    async def check(request: Request, service: ServiceDep, party: PartyDep) -> Party:
        if party.role not in roles:
            why = f"a {party.role} key cannot use {request.method} {request.url.path}"
            await run_in_threadpool(service.log_refusal, party, "role", why)
            raise ApiError(403, "forbidden", f"{why}; it needs a {' or '.join(roles)} key")
        return party

    return check


DepartmentParty = Annotated[Party, Depends(role("department"))]
ServiceParty = Annotated[Party, Depends(role("service"))]
SubjectParty = Annotated[Party, Depends(role("subject"))]
ReviewerParty = Annotated[Party, Depends(role("reviewer"))]
AuditorParty = Annotated[Party, Depends(role("auditor"))]
AdminParty = Annotated[Party, Depends(role("admin"))]
OversightParty = Annotated[Party, Depends(role("auditor", "admin"))]


Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="rows to skip")]


def refuse(
    service: Service, party: Party, action: str, why: str, message: str, field: str | None
) -> ApiError:
    """Log a refused attempt (another department's records, another service) and return the
    403 to raise."""
    service.log_refusal(party, action, why)
    return ApiError(403, "forbidden", message, field)
