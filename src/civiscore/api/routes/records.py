"""Departments submit records: batches, idempotent by record_id, corrections as retractions."""

from __future__ import annotations

from fastapi import APIRouter

from civiscore.api.deps import DepartmentParty, ServiceDep, refuse
from civiscore.api.errors import ERROR_RESPONSES
from civiscore.api.schemas import RecordsIn, RowProblemOut, SubmissionOut

router = APIRouter(prefix="/v1/records", tags=["departments"], responses=ERROR_RESPONSES)


@router.post("", response_model=SubmissionOut)
def submit_records(body: RecordsIn, party: DepartmentParty, service: ServiceDep) -> SubmissionOut:
    """Submit records for your own department. Rows already stored count as duplicates;
    rejected rows come back with their index, field and reason."""
    if body.department is not None and body.department != party.department:
        raise refuse(
            service,
            party,
            "records.submit",
            f"key for {party.department!r} tried to write records of {body.department!r}",
            f"this key writes records of {party.department!r} only",
            "department",
        )
    result = service.submit_records(party, [r.model_dump() for r in body.records])
    return SubmissionOut(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=[
            RowProblemOut(index=p.index, field=p.field, reason=p.reason) for p in result.rejected
        ],
    )
