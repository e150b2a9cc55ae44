"""Daily updates by tallies: add and remove the records that changed, not rescore subjects.

:mod:`civiscore.engine.incremental` shows which subjects' rows can differ between a snapshot at
(T1, K1) and the question (T2, K2), and why every other subject's rows carry over. Rerunning
the plan for those subjects reads all of their records: at Beijing's size a day touches 100,000
to 660,000 subjects whose 1-27 million records lie all over the table, and finding them is a
scan of every record (2-3.5 s of a 19 s full score). This module reads only the records that
*changed*: the same cases (a)-(d), taken as records instead of subjects, plus the records a
retraction received in (K1, K2] withdraws. Every other record of an affected subject
contributes the same at (T2, K2) as at (T1, K1), by the argument's step 3 applied record by
record.

Points
------
A subject's points in a context are, per rule, the sum of its matched records still counting
at T, and for a capped rule ``least(sum, cap)`` per calendar year (:func:`civiscore.engine.plan`
``_totals``). A snapshot stores what that needs besides the answer: each context's number of
counting records (``snapshot_contexts.records``; a row exists while it is positive) and, per
capped rule and year, the sum before the cap and its records (``snapshot_caps``). A changed
record counted at (T1, K1) when it was received by K1 (and read by the base's plan), occurred by
T1, was not withdrawn by K1 and still counted at T1; likewise at (T2, K2). Its points move
between the two. So, per subject, context and capped group:

* an uncapped rule's sum moves by the moved points;
* a capped group's sum moves likewise and its contribution goes from ``least(old, cap)`` to
  ``least(new, cap)``;
* the records counted move by the moved records.

Decimal sums are exact, so the result is the full score's to the cent (the property tests in
``tests/test_incremental.py`` compare them row for row, as the benchmark does at Beijing's size).

Listings and scores
-------------------
A listing is not a sum, so for the subjects with a changed record of a kind some listing reads
(a decision, its settlement, conduct) the plan's listing stages are rerun over their records of
those kinds, read from :mod:`civiscore.store.kind_records` without withdrawn ones. Every other
affected subject keeps its base listings; only band-triggered benefits follow its new band. The
plan's own ``scores`` and ``benefits`` stages then run on the affected subjects.

When it applies
---------------
:func:`why_not` names the cases where the base cannot be brought forward this way, and the
update then reruns the plan for the affected subjects as before: a snapshot in the chain from
before these counts existed, the withdrawals tables not covering the records counted, or a
record stored after the base's plan read the table but received by K1 (the base never counted
it, and the rule "received by K1" would say it had).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import duckdb

from civiscore.engine.incremental import LINEAGE, changes_sql, window_sql, within_horizon_sql
from civiscore.engine.plan import (
    POINTS,
    capped_total_sql,
    matched_sql,
    rule_context_sql,
    stages,
)
from civiscore.rulebook.model import Rulebook
from civiscore.store import kind_records, withdrawals
from civiscore.store.base import Snapshot
from civiscore.store.snapshots import rows_sql
from civiscore.store.timeline import Coverage
from civiscore.timeutil import sql_timestamp

# What tallies read of a changed record: no strings but the kind (dictionary-coded) and the
# retracted id (almost always NULL). Listings are rerun from kind_records; a record's points
# need no id. At Beijing's size the scans for a day passing took 0.82 s instead of 1.09 s so.
_COLUMNS = "rowid AS row_id, sid, kind, occurred_at, quantity, retracts, received_at"


def listing_kinds(rb: Rulebook) -> frozenset[str]:
    """The kinds of record any decision- or conduct-triggered listing reads.

    >>> from civiscore.rulebook.load import demo_rulebook_path, load
    >>> sorted(listing_kinds(load(demo_rulebook_path())))[:2]
    ['court.judgment_default', 'court.judgment_settled']
    """
    kinds: set[str] = set()
    for listing in rb.listings:
        trigger = listing.trigger
        if trigger.decision is not None:
            kinds.add(trigger.decision)
        if trigger.conduct is not None:
            kinds.add(trigger.conduct.kind)
        if listing.ended_by is not None:
            kinds.add(listing.ended_by.kind)
    return frozenset(kinds)


def why_not(
    cur: duckdb.DuckDBPyConnection,
    base: Snapshot,
    chain: Sequence[int],
    base_seen: int | None,
    seen: int,
) -> str | None:
    """Why ``base`` cannot be brought forward by tallies over the first ``seen`` records; None
    if it can. Call after folding the withdrawals tables."""
    members = ", ".join(str(int(m)) for m in chain)
    tallied = cur.execute(
        f"SELECT count(*) FROM {LINEAGE} WHERE snapshot_id IN ({members}) AND tallied"
    ).fetchall()[0][0]
    if base_seen is None or tallied < len(chain):
        return f"snapshot {base.snapshot_id}'s chain has a snapshot stored without tallies"
    if withdrawals.covered(cur) != seen:
        return "the withdrawals tables do not cover exactly the records counted"
    late = cur.execute(
        f"SELECT count(*) FROM records WHERE rowid >= {int(base_seen)} AND rowid < {int(seen)} "
        f"AND received_at <= {sql_timestamp(base.known_at)}"
    ).fetchall()[0][0]
    if late:
        return (
            f"{late:,} records received by snapshot {base.snapshot_id}'s known-at time were "
            "stored after it was scored"
        )
    return None


def find_changes(
    cur: duckdb.DuckDBPyConnection,
    rb: Rulebook,
    base: Snapshot,
    base_seen: int,
    seen: int,
    at: dt.datetime,
    known_at: dt.datetime,
    timeline: Coverage | None = None,
) -> int:
    """Create the temporary tables ``changed`` (the records whose contribution may differ, with
    their rowids) and ``affected`` (their subjects); returns how many subjects.

    ``timeline``: what the store's records by occurrence cover (None: no such table)."""
    K1, K2 = sql_timestamp(base.known_at), sql_timestamp(known_at)
    # No watermark: every record stored after the base was received after its K (why_not), so
    # those counted are among the records received in (K1, K2] already.
    received, occurred, *clocks = changes_sql(
        rb, base, None, at, known_at, _COLUMNS, seen, timeline, disjoint=True
    )
    # Records withdrawn since the base, whenever they were stored: the withdrawals tables keep
    # what is needed of them (they lie all over the table; fetching them would read it all).
    in_a, in_d = window_sql(base, at, known_at)
    clocks.append(
        f"""SELECT row_id, sid, kind, occurred_at, quantity, retracts, received_at
        FROM {withdrawals.ROWS}
        WHERE known_since > {K1} AND known_since <= {K2} AND row_id < {int(seen)}
          AND NOT ({in_a}) AND NOT ({in_d})"""
    )
    # Only the clocks' and the withdrawn records can repeat (changes_sql's ``disjoint``).
    cur.execute(
        f"""CREATE TEMP TABLE changed AS
        {received}
        UNION ALL
        {occurred}
        UNION ALL
        SELECT DISTINCT * FROM (
        """
        + "\nUNION ALL\n".join(clocks)
        + "\n) c"
    )
    cur.execute("CREATE TEMP TABLE affected AS SELECT DISTINCT sid FROM changed")
    return int(cur.execute("SELECT count(*) FROM affected").fetchall()[0][0])


def joined_any(
    cur: duckdb.DuckDBPyConnection, base: Snapshot, at: dt.datetime, known_at: dt.datetime
) -> bool:
    """Whether a subject may have joined the population since ``base``: a changed record
    received after K1 or dated after T1 (cases (a) and (d)) that is within (T2, K2).

    Without one the population is the base's (:mod:`civiscore.engine.incremental`, step 4:
    nobody leaves it, and a subject joins by such a record), so an update need not count it.
    A day passing has none; finding and counting the population then took two scans of every
    subject's first records, 0.04-0.15 s each at Beijing's size when the zone maps cannot
    answer them (docs/benchmarks.md, "Twenty-second session").
    """
    in_a, in_d = window_sql(base, at, known_at)
    T2, K2 = sql_timestamp(at), sql_timestamp(known_at)
    row = cur.execute(
        f"""SELECT count(*) FROM (SELECT 1 FROM changed
            WHERE (({in_a}) OR ({in_d})) AND received_at <= {K2} AND occurred_at <= {T2}
            LIMIT 1) c"""
    ).fetchall()
    return bool(row[0][0])


def rescore(
    cur: duckdb.DuckDBPyConnection,
    rb: Rulebook,
    base: Snapshot,
    chain: Sequence[int],
    base_seen: int,
    seen: int,
    at: dt.datetime,
    known_at: dt.datetime,
    population: str | None,
) -> None:
    """Create the plan's stages the snapshot is written from (``scores``, ``points``,
    ``caps``, ``decision_listings``, ``conduct_listings`` and ``benefits``) for the subjects in
    ``affected``, from ``changed`` and the base snapshot. ``population`` is a SELECT of those
    subjects' population at (at, known_at), which only the base band's benefits read
    (:func:`civiscore.engine.plan.reads_population`); it may be None when they do not."""
    T1, T2 = sql_timestamp(base.at), sql_timestamp(at)
    K1, K2 = sql_timestamp(base.known_at), sql_timestamp(known_at)
    mine = "sid IN (SELECT sid FROM affected)"
    _points(cur, rb, chain, base_seen, T1, T2, K1, K2, mine)
    _listings(cur, rb, chain, seen, at, known_at, mine)
    # The plan's population stage, a view: read only when the base's band has a benefit.
    if population is not None:
        cur.execute(f"CREATE TEMP VIEW population AS {population}")
    plan = {s.name: s for s in stages(rb, at, known_at, None, population=population)}
    for name in ("scores", "benefits"):
        cur.execute(f"CREATE TEMP TABLE {name} AS {plan[name].sql}")


def _points(
    cur: duckdb.DuckDBPyConnection,
    rb: Rulebook,
    chain: Sequence[int],
    base_seen: int,
    T1: str,
    T2: str,
    K1: str,
    K2: str,
    mine: str,
) -> None:
    """``points`` (per subject and context) and ``caps`` for the affected subjects."""

    def counts(T: str, K: str) -> str:
        return (
            f"CAST(received_at <= {K} AND occurred_at <= {T} "
            f"AND (withdrawn_at IS NULL OR withdrawn_at > {K}) "
            f"AND (counts_until IS NULL OR counts_until > {T}) AS INTEGER)"
        )

    flagged = f"""(SELECT c.*, NULL::VARCHAR AS department, NULL::VARCHAR AS record_id,
               w.known_since AS withdrawn_at
        FROM changed c LEFT JOIN {withdrawals.ROWS} w ON w.row_id = c.row_id
        WHERE c.retracts IS NULL)"""
    matched = matched_sql(rb, flagged, None, keep=" l.row_id, l.received_at, l.withdrawn_at,")
    # The base's plan read only the rows below base_seen; no row above it was received by K1
    # (why_not), so the condition only says so.
    # Grouped by integers only: a rule's context and cap follow from its number, and are joined
    # on where needed. The matches are held, so that each one's end of validity (calendar
    # arithmetic) is computed once rather than in each count. At Beijing's size a day's 674,000
    # matches took 0.28 s of grouping, on five keys one of which a string; now 0.11 s.
    cur.execute(
        f"""CREATE TEMP TABLE moves AS
        WITH m AS MATERIALIZED ({matched})
        SELECT sid, rule_no, cap_year,
               sum((now - was) * raw_points) AS d_total, CAST(sum(now - was) AS BIGINT) AS d_records
        FROM (SELECT sid, rule_no, raw_points,
                     CASE WHEN cap IS NOT NULL THEN CAST(year(occurred_at) AS INTEGER) END
                         AS cap_year,
                     CASE WHEN row_id < {int(base_seen)} THEN {counts(T1, K1)} ELSE 0 END AS was,
                     {counts(T2, K2)} AS now
              FROM m) x
        WHERE now <> was
        GROUP BY sid, rule_no, cap_year"""
    )
    cur.execute(
        "CREATE TEMP TABLE base_caps AS SELECT sid, rule_no, cap_year, total, records "
        f"FROM {rows_sql('snapshot_caps', chain)} b WHERE {mine}"
    )
    # cap_year is set exactly for the moves under a cap.
    cur.execute(
        f"""CREATE TEMP TABLE caps AS
        SELECT sid, rule_no, cap_year,
               CAST(coalesce(b.total, 0) + coalesce(m.d_total, 0) AS {POINTS}) AS total,
               CAST(coalesce(b.records, 0) + coalesce(m.d_records, 0) AS INTEGER) AS records
        FROM base_caps b
        FULL JOIN (SELECT * FROM moves WHERE cap_year IS NOT NULL) m
          USING (sid, rule_no, cap_year)
        WHERE coalesce(b.records, 0) + coalesce(m.d_records, 0) > 0"""
    )

    def capped(total: str) -> str:  # as the plan's totals cap a group
        return capped_total_sql(rb, "m.rule_no", total)

    cur.execute(
        f"""CREATE TEMP TABLE points AS
        SELECT sid, context, CAST(sum(points) AS {POINTS}) AS points,
               CAST(sum(records) AS BIGINT) AS records
        FROM (SELECT sid, context, points, records
              FROM {rows_sql("snapshot_contexts", chain)} c WHERE {mine}
              UNION ALL
              SELECT m.sid, {rule_context_sql(rb, "m.rule_no")},
                     CASE WHEN m.cap_year IS NULL THEN m.d_total
                          ELSE {capped("coalesce(b.total, 0) + m.d_total")}
                               - {capped("coalesce(b.total, 0)")} END,
                     m.d_records
              FROM moves m
              LEFT JOIN base_caps b
                ON b.sid = m.sid AND b.rule_no = m.rule_no AND b.cap_year = m.cap_year) u
        GROUP BY sid, context
        HAVING sum(records) > 0"""
    )


def _listings(
    cur: duckdb.DuckDBPyConnection,
    rb: Rulebook,
    chain: Sequence[int],
    seen: int,
    at: dt.datetime,
    known_at: dt.datetime,
    mine: str,
) -> None:
    """``decision_listings`` and ``conduct_listings`` for the affected subjects: rerun by the
    plan for those with a changed record of a listing's kind, the base's for the others."""
    K2 = sql_timestamp(known_at)
    kinds = listing_kinds(rb)
    cur.execute(
        "CREATE TEMP TABLE relisted AS SELECT DISTINCT sid FROM changed "
        f"WHERE retracts IS NULL AND kind IN ({kind_records.names_sql(kinds)})"
    )
    kind_records.bring_to(cur, kinds, seen)
    # Their records of those kinds, less any withdrawn by K2, shadow the store's table for the
    # plan's listing stages (a temporary table is found first).
    # Older records than their kind's horizon change no listing at T2 (as for the records path).
    recent = " OR ".join(f"({c})" for c in within_horizon_sql(rb, at, kinds)) or "false"
    cur.execute(
        f"""CREATE TEMP TABLE records AS
        SELECT {kind_records.COLUMNS}
        FROM ({kind_records.subjects_sql(kinds, "relisted", seen)}) k
        ANTI JOIN (SELECT row_id FROM {withdrawals.ROWS}
                   WHERE known_since <= {K2} AND sid IN (SELECT sid FROM relisted)) w
          ON w.row_id = k.row_id
        WHERE {recent}"""
    )
    wanted = ("withdrawn", "live", "decision_listings", "conduct_listings")
    for stage in stages(rb, at, known_at, None):
        if stage.name in wanted:
            kind = "VIEW" if stage.view else "TABLE"
            cur.execute(f"CREATE TEMP {kind} {stage.name} AS {stage.sql}")
    cur.execute("DROP VIEW live")
    cur.execute("DROP TABLE records")
    # The others keep their base listings (their blacklists, and the redlists their benefits
    # show, which a grave sanction hides: it cannot start or end without a changed record).
    base = rows_sql("snapshot_listings", chain)
    for table, decided in (("decision_listings", True), ("conduct_listings", False)):
        rows = [
            f"('{lst.id.replace(chr(39), chr(39) * 2)}', {str(lst.grave).lower()})"
            for lst in rb.listings
            if (lst.trigger.decision is not None) == decided
            and (decided or lst.trigger.conduct is not None)
        ]
        if not rows:
            continue
        cur.execute(
            f"""INSERT INTO {table}
            SELECT b.listing, b.list, k.grave, b.sid, b.since, b.until, NULL, b.record_id,
                   b.department, b.reference
            FROM {base} b JOIN (VALUES {", ".join(rows)}) k(listing, grave) USING (listing)
            WHERE b.{mine} AND b.sid NOT IN (SELECT sid FROM relisted)"""
        )
