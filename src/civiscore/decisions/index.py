"""Served decisions: an in-memory index of every subject's active listings.

Eligibility over HTTP must answer in microseconds, so it never runs an aggregate per request.
The index holds, per subject pseudonym, the listings the plan found active when it was built;
a listing's ``until`` is compared with the moment asked, so expiry is exact without a rebuild.
The index is rebuilt for the subjects a new record touches (at once) and for everyone
periodically (band-triggered benefits change as records age).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from civiscore.decisions.check import Decision, decide
from civiscore.engine.duckdb_engine import DuckDBEngine
from civiscore.rights.explain import ActiveListing, ServiceRef
from civiscore.rulebook.model import Rulebook

_ACTIVE_SQL = """
SELECT s.pseudonym, l.sid, l.listing, l.list, l.grave, l.since, l.until, l.department,
       l.record_id, l.reference
FROM (SELECT * FROM decision_listings WHERE list = 'blacklist'
      UNION ALL SELECT * FROM conduct_listings WHERE list = 'blacklist'
      UNION ALL SELECT * FROM benefits) l
JOIN subjects s ON s.sid = l.sid
ORDER BY s.pseudonym, l.list, l.since, l.listing
"""


@dataclass(frozen=True, slots=True)
class Served:
    """One active listing of one subject, as served."""

    listing: str
    list: str
    grave: bool
    since: dt.datetime | None
    until: dt.datetime | None
    department: str | None
    record_id: str | None
    reference: str | None

    def active_at(self, at: dt.datetime) -> bool:
        return (self.since is None or self.since <= at) and (self.until is None or at < self.until)


@dataclass(frozen=True, slots=True)
class BatchAnswers:
    """Allowed and the first reason code, per subject of a batch, in the order asked."""

    allowed: list[bool]
    reason_codes: list[str | None]


class DecisionIndex:
    """Pseudonym → active listings, answering :func:`decide` without touching the store."""

    def __init__(self, rb: Rulebook, built_at: dt.datetime):
        self.rb = rb
        self.built_at = built_at
        self.by_subject: dict[str, tuple[Served, ...]] = {}
        self.sid_of: dict[str, int] = {}
        self._refs = {
            lst.id: (
                [ServiceRef(service=r.service, legal_basis=r.legal_basis) for r in lst.restricts],
                [ServiceRef(service=g.service, legal_basis=g.legal_basis) for g in lst.grants],
            )
            for lst in rb.listings
        }
        self._restricts = {lst.id: {r.service for r in lst.restricts} for lst in rb.listings}
        self._grants = {lst.id: {g.service for g in lst.grants} for lst in rb.listings}
        self._not_granted = {
            g.service: f"not_granted:{lst.id}" for lst in rb.listings for g in lst.grants
        }
        self._restriction = {name: svc.kind == "restriction" for name, svc in rb.services.items()}
        # What a subject with no listing at all gets: the answer for nine in ten subjects.
        self._default: dict[str, tuple[bool, str | None]] = {
            name: (True, None) if restriction else (False, self._not_granted.get(name))
            for name, restriction in self._restriction.items()
        }

    @classmethod
    def build(
        cls,
        engine: DuckDBEngine,
        rb: Rulebook,
        at: dt.datetime,
        sids: Sequence[int] | None = None,
        into: DecisionIndex | None = None,
    ) -> DecisionIndex:
        """Evaluate the plan at ``at`` (known now) for everyone, or refresh ``sids`` ``into``."""
        index = into if into is not None and into.rb is rb else cls(rb, at)
        cur = engine.evaluate(rb, at, at, sids)
        try:
            rows = cur.execute(_ACTIVE_SQL).fetchall()
            if sids is not None:
                gone = cur.execute(
                    "SELECT pseudonym, sid FROM subjects WHERE list_contains($s, sid)",
                    {"s": list(sids)},
                ).fetchall()
            else:
                gone = []
        finally:
            cur.close()
        if sids is None:
            index.by_subject.clear()
            index.sid_of.clear()
        for pseudonym, sid in gone:
            index.by_subject.pop(pseudonym, None)
            index.sid_of[pseudonym] = sid
        grouped: dict[str, list[Served]] = {}
        for p, sid, listing, lst, grave, since, until, dep, rec, ref in rows:
            served = Served(listing, lst, grave, since, until, dep, rec, ref)
            grouped.setdefault(p, []).append(served)
            index.sid_of[p] = sid
        index.by_subject.update({p: tuple(v) for p, v in grouped.items()})
        return index

    def listings(self, pseudonym: str, at: dt.datetime) -> list[ActiveListing]:
        return [self._active(s) for s in self.by_subject.get(pseudonym, ()) if s.active_at(at)]

    def decide(self, pseudonym: str, service: str, at: dt.datetime) -> Decision:
        """The decision for one subject and service at ``at`` (known at build time)."""
        return decide(self.rb, service, self.listings(pseudonym, at), at, at)

    def quick(self, pseudonym: str, service: str, at: dt.datetime) -> tuple[bool, str | None]:
        """Allowed and the first reason code, without building the notice (batch checks).

        Most subjects hold no listing: for them this is one dictionary miss and the service's
        default answer (a million decisions a second on one core; bench/decisions_bench.py).
        """
        served = self.by_subject.get(pseudonym)
        if served is None:
            return self._default[service]
        if self._restriction[service]:
            for s in served:
                if service in self._restricts[s.listing] and s.active_at(at):
                    return False, f"listed:{s.listing}"
            return True, None
        for s in served:
            if service in self._grants[s.listing] and s.active_at(at):
                return True, None
        return False, self._not_granted.get(service)

    def quick_many(self, pseudonyms: Sequence[str], service: str, at: dt.datetime) -> BatchAnswers:
        """:meth:`quick` for many subjects. Most subjects have no listing at all: they get the
        service's default answer, and only those the index holds are looked at one by one."""
        restriction = self.rb.services[service].kind == "restriction"
        n = len(pseudonyms)
        allowed = [restriction] * n
        codes: list[str | None] = [None if restriction else self._not_granted.get(service)] * n
        held = self.by_subject.keys() & set(pseudonyms)
        if held:
            for i, p in enumerate(pseudonyms):
                if p in held:
                    allowed[i], codes[i] = self.quick(p, service, at)
        return BatchAnswers(allowed, codes)

    def entries(self) -> Iterable[tuple[str, Served]]:
        for pseudonym, served in self.by_subject.items():
            for s in served:
                yield pseudonym, s

    def _active(self, s: Served) -> ActiveListing:
        listing = self.rb.listing(s.listing)
        restricts, grants = self._refs[s.listing]
        return ActiveListing(
            listing=s.listing,
            name=listing.name,
            list=s.list,
            grave=s.grave,
            since=s.since,
            until=s.until,
            legal_basis=listing.legal_basis,
            remedy=listing.remedy,
            record_id=s.record_id,
            department=s.department,
            reference=s.reference,
            restricts=restricts,
            grants=grants,
        )
