"""Request and response models, separate per role.

Each party's responses are their own models carrying only what that role may see: a booking
system's eligibility answer simply has no score field, an auditor's entry no record contents.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from civiscore.rights.explain import Explanation
from civiscore.timeutil import LocalDateTime

AppealId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the appeal's number")]


class In(BaseModel):
    # Strict: `false` is not a quantity and 12 is not a record_id; say so rather than guess.
    model_config = ConfigDict(extra="forbid", strict=True)


# -- departments ---------------------------------------------------------------------------


class RecordIn(In):
    record_id: str = Field(min_length=1, max_length=200)
    subject_id: str = Field(min_length=1, max_length=40)
    kind: str = Field(min_length=1, max_length=100)
    occurred_at: str = Field(min_length=1, max_length=40, examples=["2025-03-05T10:00:00"])
    quantity: float | None = None
    reference: str | None = Field(None, max_length=200)
    retracts: str | None = Field(None, max_length=200)


class RecordsIn(In):
    department: str | None = Field(
        None, description="optional; must be the key's own department when given"
    )
    records: list[RecordIn] = Field(min_length=1)


class RowProblemOut(BaseModel):
    index: int
    field: str
    reason: str


class SubmissionOut(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[RowProblemOut]


# -- booking and hiring systems ------------------------------------------------------------


class CheckIn(In):
    subject_id: str = Field(min_length=1, max_length=40)
    service: str = Field(min_length=1, max_length=60)


class BatchCheckIn(In):
    service: str = Field(min_length=1, max_length=60)
    subject_ids: list[str] = Field(min_length=1)


class Notice(BaseModel):
    """The adverse-action notice a service hands to the person it refuses."""

    listing: str
    name: str
    department: str | None
    reference: str | None
    legal_basis: str
    since: LocalDateTime | None
    until: LocalDateTime | None
    remedy: str | None
    appeal: str
    free_copy: str


class EligibilityOut(BaseModel):
    allowed: bool
    service: str
    as_of: LocalDateTime
    reason_code: str | None
    enforcement_suspended: bool
    notices: list[Notice]


class BatchResultOut(BaseModel):
    allowed: bool
    reason_code: str | None


class BatchEligibilityOut(BaseModel):
    service: str
    as_of: LocalDateTime
    enforcement_suspended: bool
    results: list[BatchResultOut]


# -- subjects ------------------------------------------------------------------------------


class MyRecordOut(Explanation):
    """The subject's own full record: score, band, sub-scores, explanation, listings."""


class AccessOut(BaseModel):
    at: LocalDateTime
    party: str
    service: str
    allowed: bool
    reason_code: str | None


class AppealIn(In):
    department: str = Field(min_length=1, max_length=100)
    record_id: str = Field(min_length=1, max_length=200)
    listing: str | None = Field(None, max_length=100)
    statement: str = Field(min_length=1, max_length=10_000)


class AppealEventOut(BaseModel):
    at: LocalDateTime
    event: str
    note: str | None


class AppealOut(BaseModel):
    id: int
    target: str
    department: str
    record_id: str
    listing: str | None
    statement: str
    filed_at: LocalDateTime
    review_due: LocalDateTime
    final_due: LocalDateTime
    status: str
    decided_at: LocalDateTime | None
    reason: str | None
    events: list[AppealEventOut] = []


# -- reviewers -----------------------------------------------------------------------------


class QueueItemOut(BaseModel):
    id: int
    target: str
    department: str
    record_id: str
    listing: str | None
    filed_at: LocalDateTime
    review_due: LocalDateTime
    final_due: LocalDateTime
    overdue: bool


class EvidenceOut(BaseModel):
    """What a reviewer needs: the appeal, the record and rule at issue, the subject's history."""

    appeal: AppealOut
    overdue: bool
    record: dict[str, object] | None
    history: Explanation


class DecisionIn(In):
    outcome: Literal["uphold", "overturn"]
    reason: str = Field(min_length=1, max_length=10_000)


# -- auditors ------------------------------------------------------------------------------


class AuditEntryOut(BaseModel):
    seq: int
    at: LocalDateTime
    actor: str
    role: str
    action: str
    subject: str | None
    detail: dict[str, object]
    hash: str


class VerifyProblemOut(BaseModel):
    seq: int | None
    kind: str
    message: str


class VerifyOut(BaseModel):
    ok: bool
    entries: int
    heads: int
    problems: list[VerifyProblemOut]


class StatsOut(BaseModel):
    as_of: LocalDateTime
    rulebook_version: str
    listings: dict[str, int]
    appeals_open: int
    appeals_overdue: int
    checks: int
    checks_denied: int
    enforcement_suspended: bool


# -- admins --------------------------------------------------------------------------------


class RulebookIn(In):
    yaml: str = Field(min_length=1, max_length=2_000_000)


class RulebookOut(BaseModel):
    version: str


class StopSwitchIn(In):
    suspended: bool
    reason: str = Field(min_length=1, max_length=2_000)


class StopSwitchOut(BaseModel):
    suspended: bool


class KeyIn(In):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["department", "service", "subject", "reviewer", "auditor", "admin"]
    department: str | None = None
    services: list[str] = []
    subject_id: str | None = None


class KeyOut(BaseModel):
    name: str
    role: str
    prefix: str
    department: str | None
    services: list[str]
    has_subject: bool
    created_at: LocalDateTime
    revoked_at: LocalDateTime | None


class NewKeyOut(BaseModel):
    name: str
    role: str
    key: str = Field(description="shown once; store it now")
