"""Eligibility: may subject S use service V at T, and if not, exactly why.

A score never decides this. Only listings do: a restriction service is refused while an active
blacklist restricts it; a benefit is granted while an active redlist grants it.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from civiscore.engine.duckdb_engine import DuckDBEngine
from civiscore.rights.explain import ActiveListing, active_listings
from civiscore.rulebook.model import Rulebook


class UnknownService(LookupError):
    pass


class Reason(BaseModel):
    code: str
    listing: str
    name: str
    legal_basis: str
    since: dt.datetime | None
    until: dt.datetime | None
    department: str | None
    reference: str | None
    record_id: str | None
    remedy: str | None
    appeal: str


class Decision(BaseModel):
    allowed: bool
    service: str
    as_of: dt.datetime
    known_at: dt.datetime
    rulebook_version: str
    reasons: list[Reason]


def appeal_text(rb: Rulebook, decided_at: dt.datetime) -> str:
    deadline = (decided_at + dt.timedelta(days=rb.appeal.within_days)).date()
    return (
        f"{rb.appeal.how.strip()} Appeal by {deadline} ({rb.appeal.within_days} days); a "
        f"reviewer answers within {rb.appeal.review_days} days."
    )


def decide(
    rb: Rulebook,
    service: str,
    listings: list[ActiveListing],
    at: dt.datetime,
    known_at: dt.datetime,
) -> Decision:
    """Pure decision from a subject's active listings."""
    svc = rb.services.get(service)
    if svc is None:
        raise UnknownService(
            f"unknown service {service!r}; the rulebook in force offers: " + ", ".join(rb.services)
        )
    appeal = appeal_text(rb, at)
    reasons: list[Reason] = []
    if svc.kind == "restriction":
        for entry in listings:
            for r in entry.restricts:
                if r.service == service:
                    reasons.append(
                        Reason(
                            code=f"listed:{entry.listing}",
                            listing=entry.listing,
                            name=entry.name,
                            legal_basis=f"{r.legal_basis}; listing: {entry.legal_basis}",
                            since=entry.since,
                            until=entry.until,
                            department=entry.department,
                            reference=entry.reference,
                            record_id=entry.record_id,
                            remedy=entry.remedy,
                            appeal=appeal,
                        )
                    )
        return Decision(
            allowed=not reasons,
            service=service,
            as_of=at,
            known_at=known_at,
            rulebook_version=rb.version,
            reasons=reasons,
        )
    granted = any(g.service == service for entry in listings for g in entry.grants)
    if not granted:
        for listing in rb.listings:
            for g in listing.grants:
                if g.service == service:
                    reasons.append(
                        Reason(
                            code=f"not_granted:{listing.id}",
                            listing=listing.id,
                            name=listing.name,
                            legal_basis=f"{g.legal_basis}; listing: {listing.legal_basis}",
                            since=None,
                            until=None,
                            department=None,
                            reference=None,
                            record_id=None,
                            remedy=_benefit_condition(rb, listing.id),
                            appeal=appeal,
                        )
                    )
    return Decision(
        allowed=granted,
        service=service,
        as_of=at,
        known_at=known_at,
        rulebook_version=rb.version,
        reasons=reasons,
    )


def _benefit_condition(rb: Rulebook, listing_id: str) -> str:
    listing = rb.listing(listing_id)
    if listing.trigger.band:
        return (
            f"granted while the band is {' or '.join(listing.trigger.band)} and no grave sanction "
            "is active"
        )
    return f"granted while listing {listing.id} is active and no grave sanction is active"


def check(
    engine: DuckDBEngine,
    rb: Rulebook,
    sid: int | None,
    service: str,
    at: dt.datetime,
    known_at: dt.datetime,
) -> Decision:
    """Decide for one subject directly from the records (any T and K)."""
    if service not in rb.services:
        return decide(rb, service, [], at, known_at)  # raises UnknownService
    if sid is None:
        return decide(rb, service, [], at, known_at)
    cur = engine.evaluate(rb, at, known_at, sid)
    try:
        listings = active_listings(rb, cur, sid)
    finally:
        cur.close()
    return decide(rb, service, listings, at, known_at)
