"""The scoring plan: the rulebook's semantics as a sequence of set-based SQL stages.

This is the one definition of what a rulebook means. Every answer — the population snapshot,
one subject's explanation, one eligibility check — runs these same stages, the population
without a subject filter and the others with one, so an explanation always adds up to the
snapshot's score.

Stages (each a table built from the previous ones):

``withdrawn``  records retracted by a later record known by K (same department and subject)
``live``       records known by K, occurred by T, not retractions themselves, not withdrawn
``decision_listings`` / ``conduct_listings``   listing instances active at T
``matched``    live records joined to the rule (and dated value) in force when they occurred
``points``     matched records still counting at T, with merit caps applied per calendar year;
               for many subjects, only their totals per context (with ``caps``, the sums per
               subject, capped rule and cap year, kept by a snapshot for daily updates)
``scores``     base + points per subject, the band, and the grave-sanction cap
``benefits``   redlists triggered by the (capped) band, suppressed by any grave sanction
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from civiscore.rulebook.model import DatedNumber, Duration, Listing, Rule, Rulebook
from civiscore.rulebook.safeguards import rule_sign
from civiscore.timeutil import sql_timestamp

POINTS = "DECIMAL(18, 2)"


def _q(text: str | None) -> str:
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


def _num(value: float | None) -> str:
    return "NULL" if value is None else repr(float(value))


def _ts(day: dt.date | None) -> str:
    return "NULL" if day is None else f"TIMESTAMP '{day.isoformat()} 00:00:00'"


def interval(d: Duration) -> str:
    """SQL to add a duration: months first, then days (matching :meth:`Duration.add_to`)."""
    return f"to_months({d.months}) + to_days({d.days})"


def _periods(rule: Rule, value: DatedNumber) -> list[tuple[dt.date, dt.date | None, float]]:
    """Split a rule into (from, until, value) periods from its dated values and effective dates."""
    end = rule.effective_until
    if not isinstance(value, dict):
        return [(rule.effective_from, end, float(value))]
    keys = sorted(value)
    out = []
    for i, start in enumerate(keys):
        v = value[start]
        nxt = keys[i + 1] if i + 1 < len(keys) else end
        if end is not None and nxt is not None:
            nxt = min(nxt, end)
        if v is not None:
            out.append((max(start, rule.effective_from), nxt, float(v)))
    return out


def count_from(valid_for: Duration, at: dt.datetime) -> dt.datetime | None:
    """A moment x where records start to count at ``at`` under ``valid_for``: one microsecond
    before it, ``valid_for.add_to`` is at most ``at``; at it, later. None near the calendar's
    ends.

    Adding months keeps the time of day but clamps the date to the month's end, so it is not
    quite non-decreasing: moments on the last four dates of a month can land on the same date in
    the target month, out of order by time of day. Dates further apart keep their order. So
    every occurrence at least :data:`_COUNT_MARGIN` after x still counts, none that far before it
    does, and only those in between need the exact test.

    >>> count_from(Duration.parse("P1M"), dt.datetime(2024, 3, 31))
    datetime.datetime(2024, 3, 1, 0, 0)
    """
    try:
        # add_to(lo) <= lo + 31 days a month + days < at, and add_to(hi) >= hi > at.
        lo = at - dt.timedelta(days=31 * valid_for.months + valid_for.days + 2)
        hi = at + dt.timedelta(microseconds=1)
        valid_for.add_to(lo)
        valid_for.add_to(hi)
    except (OverflowError, ValueError):
        return None
    step = dt.timedelta(microseconds=1)
    while hi - lo > step:  # invariant: add_to(lo) <= at < add_to(hi)
        mid = lo + (hi - lo) // 2
        if valid_for.add_to(mid) > at:
            hi = mid
        else:
            lo = mid
    return hi


# More than the spread of the four dates a month's end can clamp together (see count_from).
_COUNT_MARGIN = dt.timedelta(days=5)


def _count_bounds(rule: Rule, at: dt.datetime | None) -> tuple[str, str]:
    """SQL for (count_maybe, count_sure): occurrences before the first never count at ``at``,
    those from the second always do; in between the exact test decides."""
    far_past, far_future = "TIMESTAMP '0001-01-01 00:00:00'", "TIMESTAMP '9999-12-31 00:00:00'"
    if at is None or rule.valid_for is None:
        return "NULL::TIMESTAMP", "NULL::TIMESTAMP"
    start = count_from(rule.valid_for, at)
    if start is None:
        return far_past, far_future  # every record tested exactly
    try:
        return sql_timestamp(start - _COUNT_MARGIN), sql_timestamp(start + _COUNT_MARGIN)
    except OverflowError:
        return far_past, far_future


def rules_values_sql(rb: Rulebook, at: dt.datetime | None = None) -> str:
    """The rules as a VALUES relation, one row per rule and period of its dated value.

    With ``at``, each row also carries the bounds of :func:`_count_bounds` at that moment.
    """
    rows = []
    for no, rule in enumerate(rb.rules):
        per_unit = rule.points_per_unit is not None
        value = rule.points_per_unit if per_unit else rule.points
        assert value is not None
        lo = rule.when.quantity_at_least if rule.when else None
        hi = rule.when.quantity_below if rule.when else None
        vm = rule.valid_for.months if rule.valid_for else None
        vd = rule.valid_for.days if rule.valid_for else None
        maybe, sure = _count_bounds(rule, at)
        for start, until, v in _periods(rule, value):
            rows.append(
                f"({no}, {_q(rule.id)}, {_q(rule.kind)}, {_q(_context_of(rb, rule.kind))}, "
                f"{rule_sign(rule)}, {_num(lo)}, {_num(hi)}, {str(per_unit).lower()}, {_num(v)}, "
                f"{_num(rule.max_points_per_record)}, {vm if vm is not None else 'NULL'}, "
                f"{vd if vd is not None else 'NULL'}, "
                f"{_num(rule.cap.max_points if rule.cap else None)}, {_ts(start)}, {_ts(until)}, "
                f"{maybe}, {sure})"
            )
    if not rows:
        rows.append(
            "(NULL, NULL, NULL, NULL, 0, NULL, NULL, false, 0, NULL, NULL, NULL, NULL, NULL, NULL, "
            "NULL::TIMESTAMP, NULL::TIMESTAMP)"
        )
    return (
        "(SELECT * FROM (VALUES " + ",\n".join(rows) + ") AS rv(rule_no, rule_id, kind, context, "
        "sign, "
        "q_lo, q_hi, per_unit, value, max_per_record, valid_m, valid_d, cap, v_from, v_until, "
        "count_maybe, count_sure) "
        "WHERE rule_id IS NOT NULL)"
    )


def rule_context_sql(rb: Rulebook, rule_no: str) -> str:
    """SQL for the context of the rule numbered ``rule_no`` (as in :func:`rules_values_sql`).

    >>> from civiscore.rulebook.load import demo_rulebook_path, load
    >>> rule_context_sql(load(demo_rulebook_path()), "n")[:47]
    "CASE WHEN n IN (0, 1, 2, 3, 4) THEN 'transport'"
    """
    numbers: dict[str, list[int]] = {}
    for no, rule in enumerate(rb.rules):
        numbers.setdefault(_context_of(rb, rule.kind), []).append(no)
    whens = " ".join(
        f"WHEN {rule_no} IN ({', '.join(map(str, nos))}) THEN {_q(context)}"
        for context, nos in numbers.items()
    )
    return f"CASE {whens} END" if whens else "CAST(NULL AS VARCHAR)"


def capped_total_sql(rb: Rulebook, rule_no: str, total: str) -> str:
    """SQL for what a group's ``total`` of the rule numbered ``rule_no`` adds to its context:
    all of it, or for a capped rule at most the cap (the plan's ``points``, and a daily update's
    moves in :mod:`civiscore.engine.tallies`)."""
    caps: dict[float, list[int]] = {}
    for no, rule in enumerate(rb.rules):
        if rule.cap is not None:
            caps.setdefault(rule.cap.max_points, []).append(no)
    whens = " ".join(
        f"WHEN {rule_no} IN ({', '.join(map(str, nos))}) "
        f"THEN CAST(least({total}, {_num(cap)}) AS {POINTS})"
        for cap, nos in caps.items()
    )
    return f"CASE {whens} ELSE {total} END" if whens else total


def _context_of(rb: Rulebook, kind: str) -> str:
    found = rb.kind(kind)
    assert found is not None
    return found[1].context


def band_sql(rb: Rulebook, score: str) -> str:
    parts = [f"WHEN {score} >= {b.min!r} THEN {_q(b.band)}" for b in rb.bands if b.min is not None]
    return "CASE " + " ".join(parts) + f" ELSE {_q(rb.bands[-1].band)} END"


def band_rank_sql(rb: Rulebook, band: str) -> str:
    parts = [f"WHEN {_q(b.band)} THEN {i}" for i, b in enumerate(rb.bands)]
    return f"CASE {band} " + " ".join(parts) + " END"


@dataclass(frozen=True)
class Stage:
    """One step of the plan. ``view`` stages are cheap filters better recomputed than stored."""

    name: str
    sql: str
    view: bool = False


def stages(
    rb: Rulebook,
    at: dt.datetime,
    known_at: dt.datetime,
    sid: int | Sequence[int] | None,
    population: str | None = None,
    withdrawals: tuple[str, str] | None = None,
    withdrawn_since: bool = False,
) -> list[Stage]:
    """The plan for one question (T, K; all subjects, one, or a set) as ordered stages.

    ``population``, for everyone, is a SELECT of the subjects in the population at (T, K) that
    replaces the pass over every record (:func:`civiscore.store.firsts.population_sql`); an
    update names its affected subjects' this way, since it reads only some of their records.
    ``withdrawals``, for everyone, names the store's tables of retracted keys and the rows they
    name (:func:`civiscore.store.withdrawals.plan_tables`), read instead of grouping every
    retraction and matching every record's id against them, and the withdrawn records' points
    and counts are taken back from the totals (:func:`_totals`). ``withdrawn_since`` says that
    ``records`` carries a column of that name: when the first retraction naming each record was
    received, NULL when none has (:func:`civiscore.engine.spark_engine.export_store` writes it),
    so that ``live`` drops the withdrawn records with a filter instead of a join.
    """
    assert population is None or sid is None, "a population is for everyone"
    assert withdrawals is None or sid is None, "the withdrawals tables are for everyone"
    assert withdrawals is None or not withdrawn_since, "one way to drop withdrawn records"
    T, K = sql_timestamp(at), sql_timestamp(known_at)
    if sid is None:
        who = ""
    elif isinstance(sid, int):
        who = f" AND sid = {int(sid)}"
    else:
        who = f" AND sid IN ({', '.join(str(int(s)) for s in sid) or 'NULL'})"
    who_r = who.replace(" sid ", " r.sid ")
    everyone = (
        "SELECT DISTINCT sid FROM records\n"
        f"                  WHERE received_at <= {K} AND occurred_at <= {T}{who}"
    )
    # Expired matches only matter to one subject's explanation ("stopped counting on …"); for
    # the population or a set of subjects they are dropped at once rather than stored.
    one = isinstance(sid, int)
    still_counting = (
        ""
        if one
        # Most records compared with a constant per rule; only those near it exactly.
        else f"{_recent_enough(rb, at)}"
        "\n              AND (rv.valid_m IS NULL OR l.occurred_at >= rv.count_sure"
        "\n                   OR (l.occurred_at >= rv.count_maybe AND l.occurred_at"
        f" + to_months(rv.valid_m) + to_days(rv.valid_d) > {T}))"
    )
    withdrawn = first_retractions_sql(f"received_at <= {K}{who}")
    unmatched = None
    # The records a retraction received by K names: matched on their ids, or (for everyone,
    # from the store's tables) by rowid, which spares reading two strings of every record; the
    # totals then take them back instead of dropping them (``unmatched``), and only the
    # listings, which read a few kinds, drop them.
    dropped = """LEFT JOIN withdrawn w ON w.sid = r.sid AND w.department = r.department
                                 AND w.record_id = r.record_id"""
    not_dropped = "\n              AND w.sid IS NULL"
    if withdrawals is not None:
        keys, rows = withdrawals
        withdrawn = f"""SELECT department, record_id, sid, by_record, known_since
            FROM {keys} WHERE known_since <= {K}"""
        dropped = f"""ANTI JOIN (SELECT row_id FROM {rows} WHERE known_since <= {K}) w
              ON w.row_id = r.rowid"""
        not_dropped = ""
        # The records the retractions withdraw, with what matching them to a rule needs: their
        # points are taken back from the totals (see _totals) rather than every record being
        # probed against them (the anti-join above, 83 million probes at Beijing's size).
        unmatched = matched_sql(
            rb,
            f"""(SELECT NULL::VARCHAR AS department, NULL::VARCHAR AS record_id, sid, kind,
                       occurred_at, quantity, received_at
                FROM {rows}
                WHERE known_since <= {K} AND received_at <= {K} AND occurred_at <= {T}
                  AND retracts IS NULL)""",
            at,
            still_counting,
        )
    if withdrawn_since:
        # Withdrawn at K when its first retraction was received by K, as ``withdrawn`` finds.
        dropped = ""
        not_dropped = f"\n              AND (r.withdrawn_since IS NULL OR r.withdrawn_since > {K})"

    def received(dropped: str = "", not_dropped: str = "") -> str:
        """The records received by K and occurred by T that are no retraction."""
        return f"""SELECT r.department, r.record_id, r.sid, r.kind, r.occurred_at, r.quantity,
                   r.reference, r.received_at
            FROM records r
            {dropped}
            WHERE r.received_at <= {K} AND r.occurred_at <= {T}
              AND r.retracts IS NULL{who_r}{not_dropped}"""

    out = [
        Stage("withdrawn", withdrawn),
        Stage(
            "live",
            received(dropped, not_dropped),
            # For everyone, a view: its consumers' filters reach the scan of `records`. For a
            # few subjects, a small table: otherwise each consumer scans every record again
            # for them (four scans of 50 million records per refreshed submission).
            view=sid is None,
        ),
        *(
            []
            if unmatched is None
            else [
                # Every record received by K and occurred by T, withdrawn or not: what
                # ``matched`` reads when the withdrawn ones are taken back from the totals.
                Stage("received", received(), view=True),
                Stage("unmatched", unmatched, view=True),
            ]
        ),
        # Listings before points: the points' tables are large, and need not be held while
        # the conduct windows sort (a full score's peak memory).
        Stage("decision_listings", _decision_listings_sql(rb, T)),
        Stage("conduct_listings", _conduct_listings_sql(rb, at)),
        Stage(
            "matched",
            matched_sql(
                rb, "live" if unmatched is None else "received", None if one else at, still_counting
            ),
            # For one subject a table, read twice; otherwise only the totals below read it.
            view=not one,
        ),
        *(
            _totals(rb, unmatched is not None)
            if not one
            else [
                Stage(
                    "points",
                    f"""SELECT department, record_id, sid, kind, occurred_at, rule_id, context,
                   counts_until, raw_points, raw_points AS points
            FROM matched
            WHERE cap IS NULL AND (counts_until IS NULL OR counts_until > {T})
            UNION ALL
            SELECT department, record_id, sid, kind, occurred_at, rule_id, context,
                   counts_until, raw_points,
                   CAST(greatest(0, least(raw_points, cap - coalesce(sum(raw_points) OVER (
                       PARTITION BY sid, rule_id, year(occurred_at)
                       ORDER BY occurred_at, department, record_id
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0))) AS {POINTS})
            FROM matched
            WHERE cap IS NOT NULL AND (counts_until IS NULL OR counts_until > {T})""",
                )
            ]
        ),
        *(
            # For everyone, a view: only a snapshot's count of its subjects, and band benefits
            # when the base's band has one, read it.
            [Stage("population", population or everyone, view=True)] if sid is None else []
        ),
        Stage("scores", _scores_sql(rb, None if sid is None else everyone)),
        Stage("benefits", _benefits_sql(rb, everyone=sid is None)),
    ]
    return out


# The subjects under a grave sanction (once per grave listing): ``scores`` caps their band, and
# ``benefits`` withholds their redlists.
_GRAVE = """SELECT sid FROM decision_listings WHERE grave
                  UNION ALL SELECT sid FROM conduct_listings WHERE grave"""


def _scores_sql(rb: Rulebook, population: str | None) -> str:
    """Each subject's score, band, and whether a grave sanction caps it.

    ``population`` None (everyone): only the subjects with a counting record or a grave
    sanction. Every other member of the population scores the base, in the base's band,
    uncapped; a snapshot stores the rows that differ from that and counts its population
    apart (:func:`default_row`). At Beijing's size this spares joining 18.3 million members
    with 11.4 million totals and storing 6.9 million rows that say "base"
    (docs/benchmarks.md, "Twenty-first session"). Both sets are within the population: their
    records were received by K and occurred by T.

    Otherwise (one subject or a set) the SELECT of the population, each of whom gets a row.
    """
    # The score is narrowed to POINTS before the bands compare it (three times a row): DuckDB
    # compares a sum's wider decimal as a 128-bit number, and took a sixth longer so.
    if population is None:
        subjects = "totals t FULL JOIN grave g USING (sid)"
        who = "sid"
    else:
        subjects = f"""({population}) p LEFT JOIN totals t USING (sid)
                  LEFT JOIN grave g USING (sid)"""
        who = "p.sid"
    return f"""WITH totals AS (
                  SELECT sid, sum(points) AS total FROM points GROUP BY sid
                ), grave AS (
                  SELECT DISTINCT sid FROM ({_GRAVE}) g
                ), raw AS (
                  SELECT {who} AS sid,
                         CAST(CAST({rb.base!r} AS {POINTS}) + coalesce(t.total, 0) AS {POINTS})
                             AS score,
                         g.sid IS NOT NULL AS grave_active
                  FROM {subjects}
                )
                SELECT sid, score, grave_active,
                       {band_sql(rb, "score")} AS raw_band,
                       CASE WHEN grave_active AND {band_rank_sql(rb, band_sql(rb, "score"))}
                                 < {band_rank_sql(rb, _q(rb.grave_sanction_band_cap))}
                            THEN {_q(rb.grave_sanction_band_cap)}
                            ELSE {band_sql(rb, "score")} END AS band
                FROM raw"""


def default_row(rb: Rulebook) -> tuple[float, str]:
    """The score and band of a member of the population with no row in a snapshot's scores:
    no counting record and no grave sanction.

    >>> from civiscore.rulebook.load import demo_rulebook_path, load
    >>> default_row(load(demo_rulebook_path()))
    (1000.0, 'A')
    """
    return float(rb.base), base_band(rb)


def reads_population(rb: Rulebook) -> bool:
    """Whether a full score's benefits read the ``population`` stage: a band-triggered benefit
    of the base's band reaches the members without a row in ``scores`` (:func:`_benefits_sql`)."""
    band = base_band(rb)
    return any(lst.trigger.band is not None and band in lst.trigger.band for lst in rb.listings)


def base_band(rb: Rulebook) -> str:
    """The band of the base score."""
    for b in rb.bands:
        if b.min is not None and rb.base >= b.min:
            return b.band
    return rb.bands[-1].band


def matched_sql(
    rb: Rulebook, live: str, at: dt.datetime | None, still_counting: str = "", keep: str = ""
) -> str:
    """Records of ``live`` joined to the rule (and dated value) in force when they occurred:
    each match's rule, context, cap, points before any cap, and when it stops counting.

    ``at`` adds the bounds of :func:`_count_bounds` that ``still_counting`` (a condition on
    ``l`` and ``rv``) may use; ``keep`` names more of ``l``'s columns to carry.
    """
    return f"""SELECT l.department, l.record_id, l.sid, l.kind, l.occurred_at, rv.rule_no,
                   rv.rule_id, rv.context, rv.cap,{keep}
                   CAST(CASE WHEN rv.per_unit
                        THEN rv.sign * least(abs(round(rv.value * l.quantity, 2)),
                                             coalesce(rv.max_per_record, 1e15))
                        ELSE rv.value END AS {POINTS}) AS raw_points,
                   CASE WHEN rv.valid_m IS NULL THEN NULL
                        ELSE l.occurred_at + to_months(rv.valid_m) + to_days(rv.valid_d)
                   END AS counts_until
            FROM {live} l JOIN {rules_values_sql(rb, at)} rv
              ON l.kind = rv.kind AND l.occurred_at >= rv.v_from
             AND (rv.v_until IS NULL OR l.occurred_at < rv.v_until)
             AND (rv.q_lo IS NULL OR l.quantity >= rv.q_lo)
             AND (rv.q_hi IS NULL OR l.quantity < rv.q_hi)
            WHERE NOT (rv.per_unit AND l.quantity IS NULL){still_counting}"""


_READ = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z_0-9]*)\b(?!\s*\()", re.IGNORECASE)
_CTE = re.compile(r"(?:\bWITH|,)\s*([A-Za-z_][A-Za-z_0-9]*)\s+AS\s*(?:MATERIALIZED\s*)?\(", re.I)


def tables_read(sql: str) -> Counter[str]:
    """How many times one of the plan's statements reads each table or view by name (one named
    twice counts twice), common table expressions aside.

    A scan of the text rather than a parse, so that the base install needs no SQL parser; the
    tests check it against sqlglot's parse on every stage and snapshot query.

    >>> sorted(tables_read("WITH t AS (SELECT 1 FROM a) SELECT * FROM t JOIN b USING (x)"))
    ['a', 'b']
    """
    ctes = {name.lower() for name in _CTE.findall(sql)}
    return Counter(name for name in _READ.findall(sql) if name.lower() not in ctes)


def spent_after(plan: Sequence[Stage], keep: Collection[str]) -> dict[str, list[str]]:
    """For each stage, the earlier stage tables no later stage reads (through views too) and
    ``keep`` does not name: they can be dropped once it is built, to free their memory.

    >>> from civiscore.rulebook.load import demo_rulebook_path, load
    >>> when = dt.datetime(2026, 10, 31)
    >>> plan = stages(load(demo_rulebook_path()), when, when, None)
    >>> spent_after(plan, {"caps", "scores", "benefits"})["scores"]
    ['points']
    """
    views = {stage.name for stage in plan if stage.view}
    direct = {stage.name: set(tables_read(stage.sql)) for stage in plan}

    def through(name: str) -> set[str]:
        out: set[str] = set()
        for read in direct.get(name, set()):
            out.add(read)
            if read in views:
                out |= through(read)
        return out

    reads = {stage.name: through(stage.name) for stage in plan}
    last: dict[str, str] = {}
    for stage in plan:
        for read in reads[stage.name]:
            last[read] = stage.name
    out: dict[str, list[str]] = {stage.name: [] for stage in plan}
    for stage in plan:
        if not stage.view and stage.name not in keep and stage.name in last:
            out[last[stage.name]].append(stage.name)
    return out


def first_retractions_sql(where: str) -> str:
    """Per retracted (department, record_id, sid), its first retraction among the records
    ``where`` selects: by receipt, then by id, so that every engine and run names the same one.

    The ``withdrawn`` stage, and what :mod:`civiscore.store.withdrawals` folds.
    """
    return f"""SELECT department, retracts AS record_id, sid,
                   arg_min(record_id, {{'at': received_at, 'id': record_id}}) AS by_record,
                   min(received_at) AS known_since
            FROM records
            WHERE retracts IS NOT NULL AND {where}
            GROUP BY department, retracts, sid"""


def _recent_enough(rb: Rulebook, at: dt.datetime) -> str:
    """A bound on occurrence below which no record can still count at ``at``, when one exists.

    Adding m months and d days moves a moment by at most 31m + d days, so a record that occurred
    more than that before T has stopped counting under every rule. The bound is one constant
    (DuckDB tests it against each row group's zone map and skips old groups whole, and it spares
    the rule join the rows it keeps); the exact test follows it. No bound when a rule never
    stops counting.
    """
    if not rb.rules or any(rule.valid_for is None for rule in rb.rules):
        return ""
    days = max(31 * r.valid_for.months + r.valid_for.days for r in rb.rules if r.valid_for)
    return _after(at, days, "l.occurred_at")


def _after(at: dt.datetime, days: int, column: str) -> str:
    """``AND column > at - (days + 1) days``: a bound DuckDB tests against zone maps."""
    try:
        bound = at - dt.timedelta(days=days + 1)
    except OverflowError:  # T in the first centuries of the calendar: nothing to skip
        return ""
    return f"\n              AND {column} > {sql_timestamp(bound)}"


def _totals(rb: Rulebook, unmatched: bool) -> list[Stage]:
    """``points`` for many subjects: their points per context, without a row per record.

    One subject's explanation needs each record's points, with the yearly merit cap applied
    record by record in time order (the window above). A total needs less: caps apply to
    merits only (positive points, a positive cap, kept to the hundredth; see the rulebook's
    safeguards), and filling a cap record by record in any order then gives
    ``least(sum of the year's points, cap)`` for each subject, rule and year. So the total is
    two aggregations instead of a sort of every capped record, and equals the sum of the
    explanation's lines (pinned by a property test). ``matched`` for many subjects already holds
    only the records still counting at T.

    Only capped rules need the first aggregation, ``caps`` (per subject, rule and cap year); an
    uncapped rule's matches go straight into the sums per subject and context with the capped
    groups' contributions. At Beijing's size that spares grouping 11.5 million matches into 7.3
    million groups only to sum those again (docs/benchmarks.md, "Twentieth session"). Each
    aggregation reads ``matched`` for the kinds its rules score, so that the scan of the other
    kinds' records is skipped where the records are stored by department. ``caps`` is kept as a
    table: with the records counted per context in ``points``, it is what a snapshot stores so
    that a daily update can add and remove single records instead of reading every record of
    the subjects it touches (:mod:`civiscore.engine.tallies`).

    ``unmatched`` says that the stage of that name holds the matches of the withdrawn records
    among those ``matched`` holds: their points and counts are taken back in the same
    aggregations. Sums and counts are exact, and the caps apply to the groups' totals after it,
    so the groups are those of the records not withdrawn; a group or context whose every record
    was withdrawn is dropped.
    """
    capped, free = _scored_by(rb, capped=True), _scored_by(rb, capped=False)
    cap_year = "CAST(year(occurred_at) AS INTEGER)"
    if not unmatched:
        caps = f"""SELECT sid, rule_no, {cap_year} AS cap_year,
                   CAST(sum(raw_points) AS {POINTS}) AS total,
                   CAST(count(*) AS INTEGER) AS records
            FROM matched
            WHERE {capped}
            GROUP BY sid, rule_no, cap_year"""
        uncapped = f"SELECT sid, rule_no, raw_points, 1 AS n FROM matched WHERE {free}"
    else:
        caps = f"""SELECT sid, rule_no, cap_year,
                   CAST(sum(raw_points) AS {POINTS}) AS total,
                   CAST(sum(n) AS INTEGER) AS records
            FROM (SELECT sid, rule_no, {cap_year} AS cap_year, raw_points, 1 AS n
                  FROM matched WHERE {capped}
                  UNION ALL
                  SELECT sid, rule_no, {cap_year} AS cap_year, -raw_points, -1 AS n
                  FROM unmatched WHERE {capped}) m
            GROUP BY sid, rule_no, cap_year
            HAVING sum(n) > 0"""
        uncapped = f"""SELECT sid, rule_no, raw_points, 1 AS n FROM matched WHERE {free}
                  UNION ALL
                  SELECT sid, rule_no, -raw_points, -1 AS n FROM unmatched WHERE {free}"""
    return [
        # Narrow types: the table is 12.8 million rows at Beijing's size, held in memory until
        # the snapshot is written.
        Stage("caps", caps),
        # A rule's context and cap from its number by CASE, not by a join with the rules: an
        # engine that has the matches partitioned by subject then sums per subject and context,
        # and later per subject, without moving a row (Spark shuffled the groups again for the
        # join; docs/benchmarks.md).
        Stage(
            "points",
            f"""SELECT sid, {rule_context_sql(rb, "rule_no")} AS context,
                   sum(points) AS points, CAST(sum(n) AS BIGINT) AS records
            FROM ({uncapped}
                  UNION ALL
                  SELECT sid, rule_no, {capped_total_sql(rb, "rule_no", "total")}, records
                  FROM caps) u(sid, rule_no, points, n)
            GROUP BY sid, context
            HAVING sum(n) > 0""",
        ),
    ]


def _scored_by(rb: Rulebook, *, capped: bool) -> str:
    """A condition on a match: its rule is capped (or not), and its record of a kind such a rule
    scores. The kinds are implied by the rule; named, they reach the scan of ``records``, which
    then skips the row groups of other kinds (a department's file is stored together)."""
    kinds = sorted({r.kind for r in rb.rules if (r.cap is not None) == capped})
    if not kinds:
        return "false"
    names = ", ".join(_q(k) for k in kinds)
    return f"cap IS {'NOT ' if capped else ''}NULL AND kind IN ({names})"


def _decision_listings_sql(rb: Rulebook, T: str) -> str:
    parts = []
    for listing in rb.listings:
        if listing.trigger.decision is None:
            continue
        assert listing.duration is not None or listing.list == "redlist"
        end = f"d.occurred_at + {interval(listing.duration)}" if listing.duration else "NULL"
        settled, ended_at = "", "NULL"
        if listing.ended_by is not None:
            # The first remedy on or after the decision, with the same reference. A join and a
            # GROUP BY rather than a correlated subquery: Spark turns the subquery's
            # "e.occurred_at >= d.occurred_at" into a cartesian product of the two kinds.
            settled = f"""
            LEFT JOIN (SELECT d.department, d.record_id, min(e.occurred_at) AS ended_at
                       FROM live d JOIN live e ON e.sid = d.sid AND e.reference = d.reference
                        AND e.occurred_at >= d.occurred_at
                       WHERE d.kind = {_q(listing.trigger.decision)}
                         AND e.kind = {_q(listing.ended_by.kind)}
                       GROUP BY d.department, d.record_id) s
              ON s.department = d.department AND s.record_id = d.record_id"""
            ended_at = "s.ended_at"
        parts.append(
            f"""SELECT {_q(listing.id)} AS listing, {_q(listing.list)} AS list,
                   {str(listing.grave).lower()} AS grave, d.sid, d.occurred_at AS since,
                   {end} AS max_until, {ended_at} AS ended_at, d.record_id, d.department,
                   d.reference
            FROM live d{settled}
            WHERE d.kind = {_q(listing.trigger.decision)}"""
        )
    if not parts:
        return _empty_listings()
    union = "\nUNION ALL\n".join(parts)
    return f"""SELECT listing, list, grave, sid, since,
                   CASE WHEN ended_at IS NULL THEN max_until
                        WHEN max_until IS NULL THEN ended_at
                        ELSE least(max_until, ended_at) END AS until,
                   ended_at, record_id, department, reference
            FROM ({union}) x
            WHERE since <= {T} AND (ended_at IS NULL OR ended_at > {T})
              AND (max_until IS NULL OR max_until > {T})"""


def _empty_listings() -> str:
    return (
        "SELECT NULL::VARCHAR AS listing, NULL::VARCHAR AS list, false AS grave, "
        "NULL::BIGINT AS sid, NULL::TIMESTAMP AS since, NULL::TIMESTAMP AS until, "
        "NULL::TIMESTAMP AS ended_at, NULL::VARCHAR AS record_id, NULL::VARCHAR AS department, "
        "NULL::VARCHAR AS reference WHERE false"
    )


def _conduct_listings_sql(rb: Rulebook, at: dt.datetime) -> str:
    parts = []
    for listing in rb.listings:
        conduct = listing.trigger.conduct
        if conduct is None:
            continue
        assert listing.duration is not None
        parts.append(_one_conduct(listing, conduct.kind, conduct.count, conduct.within, at))
    if not parts:
        return _empty_listings()
    return "\nUNION ALL\n".join(parts)


# The record that started a subject's latest instance: by occurrence, and among records that
# occurred at the same moment the last by department and record_id, so that every engine and
# every run names the same one.
_LATEST = "{'since': since, 'department': department, 'record_id': record_id}"


def _one_conduct(listing: Listing, kind: str, count: int, within: Duration, at: dt.datetime) -> str:
    assert listing.duration is not None
    T = sql_timestamp(at)
    # Each record that brings the count within the window to the threshold starts an instance;
    # the subject is listed while any instance runs. "since" is the earliest running instance.
    window = f"INTERVAL '{within.months} months {within.days} days'"
    # An instance still running at T started after T - duration, and counted records from
    # `within` before that: older records (in days, at most 31 a month) can change nothing.
    dur = listing.duration
    recent = _after(at, 31 * (dur.months + within.months) + dur.days + within.days, "occurred_at")
    return f"""SELECT {_q(listing.id)} AS listing, {_q(listing.list)} AS list,
               {str(listing.grave).lower()} AS grave, sid, min(since) AS since,
               max(since + {interval(listing.duration)}) AS until, NULL::TIMESTAMP AS ended_at,
               arg_max(record_id, {_LATEST}) AS record_id,
               arg_max(department, {_LATEST}) AS department,
               NULL::VARCHAR AS reference
        FROM (
          SELECT sid, occurred_at AS since, record_id, department,
                 count(*) OVER (PARTITION BY sid ORDER BY occurred_at
                                RANGE BETWEEN {window} PRECEDING AND CURRENT ROW) AS n
          FROM live WHERE kind = {_q(kind)}{recent}
        ) c
        WHERE n >= {count} AND since <= {T} AND since + {interval(listing.duration)} > {T}
        GROUP BY sid"""


def _benefits_sql(rb: Rulebook, everyone: bool) -> str:
    """Band-triggered benefits, and the redlists of decisions and conduct, for subjects under
    no grave sanction. ``everyone``: ``scores`` holds only the subjects whose row differs from
    the base's (see :func:`_scores_sql`); the other members of ``population`` are in the base's
    band, and get its benefits here."""
    parts = []
    for listing in rb.listings:
        if listing.trigger.band is None:
            continue
        bands = ", ".join(_q(b) for b in listing.trigger.band)
        columns = f"""SELECT {_q(listing.id)} AS listing, {_q(listing.list)} AS list,
                   false AS grave, sid, NULL::TIMESTAMP AS since, NULL::TIMESTAMP AS until,
                   NULL::TIMESTAMP AS ended_at, NULL::VARCHAR AS record_id,
                   NULL::VARCHAR AS department, NULL::VARCHAR AS reference"""
        parts.append(
            f"{columns}\n            FROM scores WHERE band IN ({bands}) AND NOT grave_active"
        )
        if everyone and base_band(rb) in listing.trigger.band:  # as reads_population says
            parts.append(
                f"""{columns}
            FROM (SELECT p.sid FROM population p LEFT JOIN scores s ON s.sid = p.sid
                  WHERE s.sid IS NULL) d"""
            )
    # Decision- and conduct-triggered redlists also grant benefits, but never while a grave
    # sanction runs: the subject is in _GRAVE, as ``grave_active`` in ``scores`` says. Asked of
    # the grave listings rather than joined with the scores: the right side of a left join,
    # too large to broadcast, which Spark shuffled for each join (its listings written 0.5-1.8 s
    # faster at Beijing's size; docs/benchmarks.md, "Twenty-second session").
    for stage in ("decision_listings", "conduct_listings"):
        parts.append(
            f"""SELECT d.* FROM {stage} d
            WHERE d.list = 'redlist'
              AND NOT EXISTS (SELECT 1 FROM ({_GRAVE}) g WHERE g.sid = d.sid)"""
        )
    return "\nUNION ALL\n".join(parts)
