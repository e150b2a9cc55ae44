"""A subject's own record: score, band, sub-scores, explanation, listings, benefits, who
checked them, and their appeals. Nobody else's."""

from __future__ import annotations

from fastapi import APIRouter

from civiscore.api.deps import Limit, Offset, ServiceDep, SubjectParty
from civiscore.api.errors import ERROR_RESPONSES
from civiscore.api.schemas import AccessOut, AppealId, AppealIn, AppealOut, MyRecordOut
from civiscore.api.views import appeal_out

router = APIRouter(prefix="/v1/me", tags=["subjects"], responses=ERROR_RESPONSES)


@router.get("", response_model=MyRecordOut)
def my_record(party: SubjectParty, service: ServiceDep) -> MyRecordOut:
    """Your score, band, sub-scores, every record behind them and why, listings and benefits."""
    return MyRecordOut.model_validate(service.my_record(party).model_dump())


@router.get("/accesses", response_model=list[AccessOut])
def my_accesses(
    party: SubjectParty,
    service: ServiceDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AccessOut]:
    """Who checked you, when, for which service, with what answer (newest first)."""
    return [
        AccessOut(
            at=a.at, party=a.party, service=a.service, allowed=a.allowed, reason_code=a.reason_code
        )
        for a in service.my_accesses(party, limit, offset)
    ]


@router.post("/appeals", response_model=AppealOut, status_code=201)
def file_appeal(body: AppealIn, party: SubjectParty, service: ServiceDep) -> AppealOut:
    """Contest one of your records, or a listing it triggered, with a statement."""
    appeal = service.file_appeal(
        party,
        department=body.department,
        record_id=body.record_id,
        listing=body.listing,
        statement=body.statement,
    )
    return appeal_out(service, appeal)


@router.get("/appeals", response_model=list[AppealOut])
def my_appeals(party: SubjectParty, service: ServiceDep) -> list[AppealOut]:
    """Your appeals, each with every step taken and its outcome."""
    return [appeal_out(service, a) for a in service.my_appeals(party)]


@router.get("/appeals/{appeal_id}", response_model=AppealOut)
def my_appeal(appeal_id: AppealId, party: SubjectParty, service: ServiceDep) -> AppealOut:
    """One of your appeals (another subject's appeal is not found)."""
    return appeal_out(service, service.get_appeal(party, appeal_id))
