"""Reviewers work the appeal queue: sorted by deadline, overdue ones flagged, decided with a
written reason."""

from __future__ import annotations

from fastapi import APIRouter

from civiscore.api.deps import Limit, Offset, ReviewerParty, ServiceDep
from civiscore.api.errors import ERROR_RESPONSES
from civiscore.api.schemas import AppealId, AppealOut, DecisionIn, EvidenceOut, QueueItemOut
from civiscore.api.views import appeal_out, evidence

router = APIRouter(prefix="/v1/appeals", tags=["reviewers"], responses=ERROR_RESPONSES)


@router.get("", response_model=list[QueueItemOut])
def queue(
    party: ReviewerParty,
    service: ServiceDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[QueueItemOut]:
    """Open appeals, earliest review deadline first."""
    now = service.clock()
    return [
        QueueItemOut(
            id=a.id,
            target=a.target,
            department=a.department,
            record_id=a.record_id,
            listing=a.listing,
            filed_at=a.filed_at,
            review_due=a.review_due,
            final_due=a.final_due,
            overdue=now > a.review_due,
        )
        for a in service.appeal_queue(party, limit, offset)
    ]


@router.get("/{appeal_id}", response_model=EvidenceOut)
def get_evidence(appeal_id: AppealId, party: ReviewerParty, service: ServiceDep) -> EvidenceOut:
    """The appeal with its evidence: the record and rule at issue, the statement, the history."""
    return evidence(service, party, appeal_id)


@router.post("/{appeal_id}/decision", response_model=AppealOut)
def decide(
    appeal_id: AppealId, body: DecisionIn, party: ReviewerParty, service: ServiceDep
) -> AppealOut:
    """Uphold, or overturn (the record is withdrawn, ending any listing it triggered, at once)."""
    return appeal_out(service, service.decide_appeal(party, appeal_id, body.outcome, body.reason))
