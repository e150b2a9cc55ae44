"""A subject's explanation: every record, the rule and law that counted it, and what did not.

Built from the same plan stages as the population snapshot, so ``base + sum(lines.points)``
is the score the snapshot holds, to the cent.
"""

from __future__ import annotations

import builtins
import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

import duckdb
from pydantic import BaseModel, PlainSerializer

from civiscore.engine.duckdb_engine import DuckDBEngine
from civiscore.rulebook.model import Listing, Rulebook
from civiscore.timeutil import LocalDateTime, sql_timestamp

Points = Annotated[
    Decimal,
    PlainSerializer(lambda d: int(d) if d == d.to_integral_value() else float(d), return_type=Any),
]


class Line(BaseModel):
    record_id: str
    department: str
    kind: str
    occurred_at: LocalDateTime
    rule: str
    points: Points
    context: str
    legal_basis: str
    counts_until: LocalDateTime | None
    note: str | None = None


class NotCounted(BaseModel):
    record_id: str
    department: str
    kind: str
    occurred_at: LocalDateTime
    reason: str


class ServiceRef(BaseModel):
    service: str
    legal_basis: str


class ActiveListing(BaseModel):
    listing: str
    name: str
    list: str
    grave: bool
    since: LocalDateTime | None
    until: LocalDateTime | None
    legal_basis: str
    remedy: str | None
    record_id: str | None
    department: str | None
    reference: str | None
    restricts: builtins.list[ServiceRef]
    grants: builtins.list[ServiceRef]


class Explanation(BaseModel):
    as_of: LocalDateTime
    known_at: LocalDateTime
    rulebook_version: str
    base: Points
    score: Points
    band: str
    band_before_cap: str
    band_capped_by_grave_sanction: bool
    contexts: dict[str, Points]
    lines: list[Line]
    not_counted: list[NotCounted]
    listings: list[ActiveListing]
    benefits: list[str]


def _rows(cur: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    result = cur.execute(sql)
    names = [d[0] for d in result.description or []]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def active_listings(rb: Rulebook, cur: duckdb.DuckDBPyConnection, sid: int) -> list[ActiveListing]:
    """Active listings of one subject from an evaluated plan, most severe first."""
    rows = _rows(
        cur,
        f"""SELECT * FROM (SELECT * FROM decision_listings WHERE list = 'blacklist'
                           UNION ALL SELECT * FROM conduct_listings WHERE list = 'blacklist'
                           UNION ALL SELECT * FROM benefits)
            WHERE sid = {int(sid)} ORDER BY list, NOT grave, since, listing""",
    )
    return [_listing(rb.listing(r["listing"]), r) for r in rows]


def _listing(listing: Listing, row: dict[str, Any]) -> ActiveListing:
    return ActiveListing(
        listing=listing.id,
        name=listing.name,
        list=listing.list,
        grave=listing.grave,
        since=row["since"],
        until=row["until"],
        legal_basis=listing.legal_basis,
        remedy=listing.remedy,
        record_id=row["record_id"],
        department=row["department"],
        reference=row["reference"],
        restricts=[
            ServiceRef(service=r.service, legal_basis=r.legal_basis) for r in listing.restricts
        ],
        grants=[ServiceRef(service=g.service, legal_basis=g.legal_basis) for g in listing.grants],
    )


def explain(
    engine: DuckDBEngine, rb: Rulebook, sid: int | None, at: dt.datetime, known_at: dt.datetime
) -> Explanation:
    """Explain subject ``sid`` (None: a subject with no records) at T as known at K."""
    cur = engine.evaluate(rb, at, known_at, -1 if sid is None else sid)
    try:
        return _explain(rb, cur, -1 if sid is None else sid, at, known_at)
    finally:
        cur.close()


def _explain(
    rb: Rulebook, cur: duckdb.DuckDBPyConnection, sid: int, at: dt.datetime, known_at: dt.datetime
) -> Explanation:
    score_rows = _rows(cur, "SELECT * FROM scores")
    base = Decimal(str(rb.base)).quantize(Decimal("0.01"))
    if score_rows:
        s = score_rows[0]
        score, band, raw_band = s["score"], s["band"], s["raw_band"]
    else:
        score = base
        band = raw_band = next(
            (b.band for b in rb.bands if b.min is not None and float(base) >= b.min),
            rb.bands[-1].band,
        )
    counted = _rows(
        cur,
        "SELECT * FROM points WHERE points <> 0 ORDER BY occurred_at, department, record_id",
    )
    lines = []
    for r in counted:
        rule = rb.rule(r["rule_id"])
        note = None
        if r["points"] != r["raw_points"]:
            assert rule.cap is not None
            note = (
                f"reduced from {r['raw_points']} by the cap of {rule.cap.max_points:g} points a "
                f"calendar year for rule {rule.id}"
            )
        lines.append(
            Line(
                record_id=r["record_id"],
                department=r["department"],
                kind=r["kind"],
                occurred_at=r["occurred_at"],
                rule=rule.id,
                points=r["points"],
                context=r["context"],
                legal_basis=rule.legal_basis,
                counts_until=r["counts_until"],
                note=note,
            )
        )
    contexts: dict[str, Decimal] = {}
    for line in lines:
        contexts[line.context] = contexts.get(line.context, Decimal(0)) + line.points
    listings = active_listings(rb, cur, sid)
    return Explanation(
        as_of=at,
        known_at=known_at,
        rulebook_version=rb.version,
        base=base,
        score=score,
        band=band,
        band_before_cap=raw_band,
        band_capped_by_grave_sanction=band != raw_band,
        contexts=contexts,
        lines=lines,
        not_counted=_not_counted(rb, cur, sid, at, known_at),
        listings=[x for x in listings if x.list == "blacklist"],
        benefits=sorted({g.service for x in listings if x.list == "redlist" for g in x.grants}),
    )


def _not_counted(
    rb: Rulebook, cur: duckdb.DuckDBPyConnection, sid: int, at: dt.datetime, known_at: dt.datetime
) -> list[NotCounted]:
    rows = _rows(
        cur,
        f"""SELECT r.department, r.record_id, r.kind, r.occurred_at, r.retracts,
                   w.by_record, m.rule_id, m.counts_until, p.points
            FROM records r
            LEFT JOIN withdrawn w ON w.department = r.department AND w.record_id = r.record_id
                                 AND w.sid = r.sid
            LEFT JOIN matched m ON m.department = r.department AND m.record_id = r.record_id
            LEFT JOIN points p ON p.department = r.department AND p.record_id = r.record_id
            WHERE r.sid = {int(sid)} AND r.received_at <= {sql_timestamp(known_at)}
              AND r.occurred_at <= {sql_timestamp(at)}
              AND (p.points IS NULL OR p.points = 0)
            ORDER BY r.occurred_at, r.department, r.record_id""",
    )
    acts_through = _listing_roles(rb)
    out = []
    for r in rows:
        if r["retracts"] is not None:
            reason = f"a retraction: withdraws record {r['retracts']} of {r['department']}"
        elif r["by_record"] is not None:
            reason = f"withdrawn by record {r['by_record']} of {r['department']}"
        elif r["rule_id"] is not None and r["points"] is None:
            rule = rb.rule(r["rule_id"])
            reason = (
                f"stopped counting on {r['counts_until']:%Y-%m-%d %H:%M} "
                f"(rule {rule.id} counts for {rule.valid_for})"
            )
        elif r["rule_id"] is not None:
            rule = rb.rule(r["rule_id"])
            assert rule.cap is not None
            reason = (
                f"the cap of {rule.cap.max_points:g} points in {r['occurred_at']:%Y} for rule "
                f"{rule.id} was already reached"
            )
        elif r["kind"] in acts_through:
            reason = acts_through[r["kind"]]
        else:
            reason = (
                f"no rule in force on {r['occurred_at']:%Y-%m-%d} gives points for "
                f"{r['kind']} records like this one"
            )
        out.append(
            NotCounted(
                record_id=r["record_id"],
                department=r["department"],
                kind=r["kind"],
                occurred_at=r["occurred_at"],
                reason=reason,
            )
        )
    return out


def _listing_roles(rb: Rulebook) -> dict[str, str]:
    roles: dict[str, str] = {}
    for listing in rb.listings:
        if listing.trigger.decision:
            roles.setdefault(
                listing.trigger.decision, f"a decision record: it acts through listing {listing.id}"
            )
        if listing.ended_by:
            roles.setdefault(
                listing.ended_by.kind,
                f"a remedy record: it ends listing {listing.id} for the same reference",
            )
        if listing.trigger.conduct:
            roles.setdefault(listing.trigger.conduct.kind, f"counts towards listing {listing.id}")
    return roles
