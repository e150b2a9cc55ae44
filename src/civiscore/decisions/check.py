"""Eligibility: may subject S use service V at T, and if not, exactly why.

A score never decides this. Only listings do: a restriction service is refused while an active
blacklist restricts it; a benefit is granted while an active redlist grants it.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from civiscore.engine.duckdb_engine import DuckDBEngine
from civiscore.rights.explain import ActiveListing, active_listings
from civiscore.rulebook.model import Listing, Rulebook
from civiscore.timeutil import LocalDateTime


class UnknownService(LookupError):
    pass


class Reason(BaseModel):
    code: str
    listing: str
    name: str
    legal_basis: str
    since: LocalDateTime | None
    until: LocalDateTime | None
    department: str | None
    reference: str | None
    record_id: str | None
    remedy: str | None
    appeal: str


class Decision(BaseModel):
    allowed: bool
    service: str
    as_of: LocalDateTime
    known_at: LocalDateTime
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
    if svc.kind == "restriction":
        reasons = [
            _reason(f"listed:{e.listing}", rb.listing(e.listing), r.legal_basis, appeal, e)
            for e in listings
            for r in e.restricts
            if r.service == service
        ]
        allowed = not reasons
    else:
        allowed = any(g.service == service for e in listings for g in e.grants)
        reasons = [
            _reason(f"not_granted:{lst.id}", lst, g.legal_basis, appeal, None)
            for lst in rb.listings
            for g in lst.grants
            if g.service == service and not allowed
        ]
    return Decision(
        allowed=allowed,
        service=service,
        as_of=at,
        known_at=known_at,
        rulebook_version=rb.version,
        reasons=reasons,
    )


def _reason(
    code: str, listing: Listing, basis: str, appeal: str, active: ActiveListing | None
) -> Reason:
    """One reason; ``active`` is the subject's listing for a denial, None for a benefit not held."""
    return Reason(
        code=code,
        listing=listing.id,
        name=listing.name,
        legal_basis=f"{basis}; listing: {listing.legal_basis}",
        since=active.since if active else None,
        until=active.until if active else None,
        department=active.department if active else None,
        reference=active.reference if active else None,
        record_id=active.record_id if active else None,
        remedy=listing.remedy if active else _benefit_condition(listing),
        appeal=appeal,
    )


def _benefit_condition(listing: Listing) -> str:
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
