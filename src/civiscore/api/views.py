"""Builders shared by routes: an appeal as its owner sees it, and a reviewer's evidence."""

from __future__ import annotations

from typing import Any

from civiscore.api.keys import Party
from civiscore.api.schemas import AppealEventOut, AppealOut, EvidenceOut
from civiscore.rights.explain import explain
from civiscore.service import NotFound, Service
from civiscore.store.operational import Appeal


def appeal_out(service: Service, appeal: Appeal) -> AppealOut:
    return AppealOut(
        id=appeal.id,
        target=appeal.target,
        department=appeal.department,
        record_id=appeal.record_id,
        listing=appeal.listing,
        statement=appeal.statement,
        filed_at=appeal.filed_at,
        review_due=appeal.review_due,
        final_due=appeal.final_due,
        status=appeal.status,
        decided_at=appeal.decided_at,
        reason=appeal.reason,
        events=[
            AppealEventOut(at=e.at, event=e.event, note=e.note)
            for e in service.appeal_events(appeal.id)
        ],
    )


def evidence(service: Service, party: Party, appeal_id: int) -> EvidenceOut:
    """The appeal, the record at issue as the explanation shows it, and the subject's history."""
    appeal = service.get_appeal(party, appeal_id)
    sid = service.ws.store.sid_for(appeal.subject)
    if sid is None:
        raise NotFound(f"the subject of appeal {appeal_id} has no records")
    at = service.clock()
    with service.lock:
        history = explain(service.ws.engine, service.ws.rulebook_at(at), sid, at, at)
    record: dict[str, Any] | None = None
    for line in history.lines:
        if (line.department, line.record_id) == (appeal.department, appeal.record_id):
            record = {"counts": True, **line.model_dump(mode="json")}
    for nc in history.not_counted:
        if (nc.department, nc.record_id) == (appeal.department, appeal.record_id):
            record = {"counts": False, **nc.model_dump(mode="json")}
    service.log_access_by_reviewer(party, appeal)
    return EvidenceOut(
        appeal=appeal_out(service, appeal),
        overdue=at > appeal.review_due and appeal.status == "open",
        record=record,
        history=history,
    )
