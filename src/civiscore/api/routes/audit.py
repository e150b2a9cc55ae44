"""Auditors read and verify the log and read aggregate statistics — no record contents."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query

from civiscore.api.deps import AuditorParty, Limit, OversightParty, ServiceDep
from civiscore.api.errors import ERROR_RESPONSES
from civiscore.api.schemas import AuditEntryOut, StatsOut, VerifyOut, VerifyProblemOut

router = APIRouter(prefix="/v1", tags=["auditors"], responses=ERROR_RESPONSES)


@router.get("/audit", response_model=list[AuditEntryOut])
def entries(
    party: AuditorParty,
    service: ServiceDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Limit = 100,
) -> list[AuditEntryOut]:
    """Log entries after sequence number ``after``, oldest first."""
    return [
        AuditEntryOut(
            seq=e.seq,
            at=e.at,
            actor=e.actor,
            role=e.role,
            action=e.action,
            subject=e.subject,
            detail=json.loads(e.detail),
            hash=e.hash,
        )
        for e in service.audit.entries(after_seq=after, limit=limit)
    ]


@router.get("/audit/verify", response_model=VerifyOut)
def verify(party: AuditorParty, service: ServiceDep) -> VerifyOut:
    """Recompute the hash chain and check every signed head."""
    report = service.verify_audit()
    return VerifyOut(
        ok=report.ok,
        entries=report.entries,
        heads=report.heads,
        problems=[
            VerifyProblemOut(seq=p.seq, kind=p.kind, message=p.message) for p in report.problems
        ],
    )


@router.get("/stats", response_model=StatsOut)
def stats(party: OversightParty, service: ServiceDep) -> StatsOut:
    """Aggregate statistics: listings, appeals (open, overdue), checks (total, denied)."""
    return StatsOut.model_validate(service.stats(party))
