"""Booking and hiring systems ask: may this subject use my service? Allowed or denied, a reason
code, and the adverse-action notice — never a score, a record or another service's answer."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

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
def check(body: CheckIn, party: ServiceParty, service: ServiceDep) -> EligibilityOut:
    """One subject, one of your services."""
    _scope(service, party, body.service)
    result = service.check(party, body.subject_id, body.service)
    d = result.decision
    return EligibilityOut(
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


@router.post("/batch", response_model=BatchEligibilityOut)
def check_batch(body: BatchCheckIn, party: ServiceParty, service: ServiceDep) -> JSONResponse:
    """Many subjects, one of your services; answers in the order asked. Ask `/check` for the
    notice of a denied subject."""
    _scope(service, party, body.service)
    results, suspended = service.check_batch(party, body.service, body.subject_ids)
    # Plain dicts, not 100,000 response models: the shape is BatchEligibilityOut all the same
    # (pinned by the OpenAPI document and the schemathesis test).
    return JSONResponse(
        {
            "service": body.service,
            "as_of": iso_local(service.clock()),
            "enforcement_suspended": suspended,
            "results": [{"allowed": a, "reason_code": c} for a, c in results],
        }
    )
