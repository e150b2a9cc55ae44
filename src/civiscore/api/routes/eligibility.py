"""Booking and hiring systems ask: may this subject use my service? Allowed or denied, a reason
code, and the adverse-action notice — never a score, a record or another service's answer."""

from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from civiscore.api.deps import ServiceDep, ServiceParty, refuse
from civiscore.api.errors import ERROR_RESPONSES
from civiscore.api.keys import Party
from civiscore.api.schemas import (
    BatchCheckIn,
    BatchEligibilityOut,
    CheckIn,
    EligibilityOut,
    Notice,
)
from civiscore.service import Service
from civiscore.timeutil import iso_local

router = APIRouter(prefix="/v1/eligibility", tags=["services"], responses=ERROR_RESPONSES)

FREE_COPY = (
    "You are entitled to a free copy of your record: sign in to the civiscore resident portal "
    "or ask the issuing department."
)


def _scope(service: Service, party: Party, name: str) -> None:
    if name not in party.services:
        raise refuse(
            service,
            party,
            "eligibility",
            f"key registered for {', '.join(party.services)} asked about {name!r}",
            f"this key may ask about {', '.join(party.services)} only",
            "service",
        )


@router.post("/check", response_model=EligibilityOut)
async def check(body: CheckIn, party: ServiceParty, service: ServiceDep) -> Response:
    """One subject, one of your services."""
    # On the event loop: the decision is a dictionary lookup, and the wait for the access log
    # to commit holds no thread (see civiscore.recorder). A refusal's log write is the
    # exception, and it goes to the thread pool.
    if body.service not in party.services:
        await run_in_threadpool(_scope, service, party, body.service)
    result = await service.check_async(party, body.subject_id, body.service)
    d = result.decision
    out = EligibilityOut(
        allowed=d.allowed,
        service=d.service,
        as_of=d.as_of,
        reason_code=d.reasons[0].code if d.reasons else None,
        enforcement_suspended=result.enforcement_suspended,
        notices=[
            Notice(
                listing=r.listing,
                name=r.name,
                department=r.department,
                reference=r.reference,
                legal_basis=r.legal_basis,
                since=r.since,
                until=r.until,
                remedy=r.remedy,
                appeal=r.appeal,
                free_copy=FREE_COPY,
            )
            for r in d.reasons
        ],
    )
    # Serialised once here: returned as a model, FastAPI would validate it against
    # response_model again before encoding it (the schema is the same; OpenAPI says so).
    return Response(out.model_dump_json(), media_type="application/json")


@router.post("/batch", response_model=BatchEligibilityOut)
def check_batch(body: BatchCheckIn, party: ServiceParty, service: ServiceDep) -> Response:
    """Many subjects, one of your services; answers in the order asked. Ask `/check` for the
    notice of a denied subject."""
    _scope(service, party, body.service)
    answers, suspended = service.check_batch(party, body.service, body.subject_ids)
    # Not 100,000 response models, nor 100,000 dicts through the JSON encoder: a batch has a
    # handful of distinct answers, each encoded once and joined. The shape is
    # BatchEligibilityOut all the same (pinned by the OpenAPI document and schemathesis).
    pairs = list(zip(answers.allowed, answers.reason_codes, strict=True))
    encoded = {
        (a, c): json.dumps({"allowed": a, "reason_code": c}, separators=(",", ":"))
        for a, c in set(pairs)
    }
    head = json.dumps(
        {
            "service": body.service,
            "as_of": iso_local(service.clock()),
            "enforcement_suspended": suspended,
            "results": None,
        },
        separators=(",", ":"),
    )
    assert head.endswith('"results":null}')
    body_json = head[: -len("null}")] + "[" + ",".join(map(encoded.__getitem__, pairs)) + "]}"
    return Response(body_json.encode(), media_type="application/json")
