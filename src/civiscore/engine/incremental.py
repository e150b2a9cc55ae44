"""Incremental scoring: bring the latest snapshot forward by a day instead of rescoring everyone.

A snapshot answers the question (T, K): every subject's score, band, sub-scores and listings at
moment T from the records received by K. The daily question moves to (T2, K2) with T2 ≥ T1 and
K2 ≥ K1, under the same rulebook version. Most subjects' answers do not change in a day, so
:meth:`civiscore.engine.duckdb_engine.DuckDBEngine.update` recomputes only the *affected*
subjects' rows and stores them as a delta on the base snapshot (:mod:`civiscore.store.snapshots`):
every other subject's rows are the base's. It recomputes them from the base and the records that
changed (:mod:`civiscore.engine.tallies`) or, where that cannot be done, by rerunning the plan
over those subjects' records that can still matter (:func:`still_matters_sql`).

Why the result equals a full score at (T2, K2)
----------------------------------------------

1. **Each subject's rows depend only on its own records.** Every stage of
   :mod:`civiscore.engine.plan` is keyed by ``sid``: retractions withdraw records of the same
   subject (``withdrawn`` joins on ``sid``), matching and points are per record, merit caps
   partition by (subject, rule, year), a settlement ends a listing of the same subject, conduct
   windows partition by subject, and ``scores`` and ``benefits`` group or join by subject. The
   rulebook is the same at T1 and T2 (same version; a version's text never changes). So a
   subject's rows at (T, K) are a function f(R, T, K) of its records R alone.

2. **Records only enter f through thresholds on K and T.** Reading the plan, every condition
   that mentions K or T compares a record's own timestamp with it:

   * ``received_at <= K`` (``withdrawn``, ``live``, the population in ``scores``);
   * ``occurred_at <= T`` (``live`` and therefore settlements, decision listings, conduct
     instances and merit-cap partitions; the population counts every record, retractions and
     withdrawn records included);
   * ``counts_until > T`` (``matched``, ``points``), where ``counts_until`` is the occurrence
     plus ``valid_for`` of a rule for that record's kind;
   * ``max_until > T`` for a decision listing and ``since + duration > T`` for a conduct
     instance, both the occurrence of a record of the trigger kind plus the listing's
     ``duration``;
   * ``ended_at > T``: ``ended_at`` is a live settlement's occurrence, already at most T, so
     this reduces to the ``occurred_at`` case.

   Nothing else depends on T or K: rule periods and dated values are chosen by occurrence, the
   conduct window ``count(*) OVER (... RANGE within PRECEDING AND CURRENT ROW)`` only counts
   records that occurred no later than the current one, and the cap order is by occurrence.

3. **A threshold x ≤ T (or x > T) has the same value at T1 and T2 unless T1 < x ≤ T2**, and
   likewise for K. So f(R, T1, K1) = f(R, T2, K2) unless, for some record of the subject, one of
   these falls in its interval:

   (a) ``received_at`` in (K1, K2]: new records, retractions, corrections and settlements;
   (d) ``occurred_at`` in (T1, T2] (a record known early but dated later; this also starts
       every conduct-listing instance and every settlement, and moves merit caps);
   (b) occurrence + ``valid_for`` of a rule of the record's kind in (T1, T2]: a record stops
       counting, and under a cap the records after it in the same year may get more points;
   (c) occurrence + ``duration`` of a decision- or conduct-triggered listing on the record's
       kind in (T1, T2]: a listing instance ends. This is checked on records rather than on
       the snapshot's listings, because a subject's conduct listing shows only the earliest
       running instance as ``since`` and the latest end as ``until``: when an earlier instance
       ends, ``since`` moves although ``until`` did not pass;
   (e) benefits follow the band, the grave-sanction flag and the listings, which only change
       through (a)-(d).

   The affected set is the union of (a)-(d) over all stored records received by K2, computed
   in one set-based query. It may be larger than needed: (b) uses every rule of the kind
   rather than the one the record matched (a rule's quantity condition and dated periods are
   the plan's business), and retracted records keep their clocks. Rescoring a subject whose
   rows did not change reproduces the same rows, so a superset is safe.

4. **Subjects never leave the population** (records are append-only and both thresholds only
   move forward), and new subjects have a record in (a) or (d). So the new snapshot is the
   base snapshot's rows of unaffected subjects plus the plan's rows for the affected ones.
   For those the plan needs only the records within their kind's horizon at T2 and the
   retractions (:func:`horizons`), plus membership of the population: a subject in the base's
   population stays in it, and one that joins does so by a record of (a) or (d). The engine
   reads membership at (T2, K2) from each subject's first records, as a full score does, and
   counts the population only when a changed record of (a) or (d) within (T2, K2) may have
   brought someone in (otherwise it is the base's; :func:`civiscore.engine.tallies.joined_any`).

5. **The base snapshot must say what it read.** Step 3 assumes the base holds f at (T1, K1)
   over every record received by K1. A record received by K1 but stored after the base's plan
   read the table (an ingest still running when the base was scored, or one given an earlier
   ``received_at``) would escape (a). Every snapshot written by this engine therefore records
   in ``snapshot_lineage`` how many rows ``records`` had when its plan started
   (``records_seen``; the table is append-only, so later rows have ``rowid`` ≥ that count), and
   rows stored after that are affected too. A base snapshot without a lineage row (written
   before this table existed) is trusted to have seen everything received by its K.

Falling back
------------
:func:`why_full` names the cases where the argument does not hold (no snapshot yet, another
rulebook version in force at T2, T2 < T1 or K2 < K1); the engine then scores the whole
population and says why. It also scores everyone when more than :data:`FULL_SCORE_SHARE` of
the base snapshot's subjects are affected: the result is the same, and a full score is then
as fast (see "Incremental scoring" in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import duckdb

from civiscore.engine.plan import interval
from civiscore.rulebook.model import Duration, Rulebook
from civiscore.store.base import Snapshot
from civiscore.store.duckdb_store import first_row
from civiscore.store.snapshots import SNAPSHOT_TABLES as SNAPSHOT_TABLES
from civiscore.store.snapshots import rows_sql
from civiscore.store.timeline import Coverage
from civiscore.store.timeline import relation_sql as timeline_sql
from civiscore.timeutil import iso_local, sql_timestamp

LINEAGE = "snapshot_lineage"

_LINEAGE_DDL = f"""
CREATE TABLE IF NOT EXISTS {LINEAGE} (
    snapshot_id BIGINT NOT NULL,
    base_snapshot_id BIGINT,
    affected_subjects BIGINT,
    records_seen BIGINT NOT NULL,
    tallied BOOLEAN
)"""

# Above this share of the base snapshot's subjects affected, a full score is as fast as an
# update, which scans for the affected subjects' records and reruns the plan on them. Measured
# at 1 million residents before deltas: 36 % affected took 0.9-1.4x a full score, 0.6 % 13 %;
# at 21.9 million with deltas, 3.6 % took 26 % (docs/benchmarks.md, "Incremental scoring").
FULL_SCORE_SHARE = 0.25


@dataclass(frozen=True)
class Update:
    """The outcome of ``score --incremental``.

    Attributes:
        snapshot: The snapshot written.
        base_snapshot_id: The snapshot it was brought forward from; None for a full score.
        affected_subjects: Subjects whose rows were recomputed; None for a full score.
        full_reason: Why the whole population was scored instead; None for an update.
        method: ``"tallies"`` when the changed records were added and removed
            (:mod:`civiscore.engine.tallies`), ``"records"`` when the plan was rerun over the
            affected subjects' records, ``"full"`` for a full score.
        records_reason: For ``"records"``, why tallies could not be used.
    """

    snapshot: Snapshot
    base_snapshot_id: int | None
    affected_subjects: int | None
    full_reason: str | None
    method: str = "full"
    records_reason: str | None = None


def why_full(
    base: Snapshot | None, version: str, at: dt.datetime, known_at: dt.datetime
) -> str | None:
    """Why the snapshot ``base`` cannot be brought forward to (at, known_at); None if it can.

    >>> t = dt.datetime(2026, 10, 31)
    >>> base = Snapshot(4, "2026.1", t, t, t, 10)
    >>> why_full(base, "2026.1", t + dt.timedelta(days=1), t + dt.timedelta(days=1)) is None
    True
    >>> print(why_full(base, "2026.2", t + dt.timedelta(days=1), t))
    rulebook 2026.2 is in force at 2026-11-01T00:00:00+08:00 but snapshot 4 was scored under 2026.1; a change of rules rescores everyone
    """  # noqa: E501
    if base is None:
        return "there is no snapshot to bring forward yet"
    if base.rulebook_version != version:
        return (
            f"rulebook {version} is in force at {iso_local(at)} but snapshot "
            f"{base.snapshot_id} was scored under {base.rulebook_version}; a change of rules "
            "rescores everyone"
        )
    if at < base.at:
        return (
            f"--at {iso_local(at)} is before snapshot {base.snapshot_id}'s as-of time "
            f"{iso_local(base.at)}; an update only moves forward in time"
        )
    if known_at < base.known_at:
        return (
            f"--known-at {iso_local(known_at)} is before snapshot {base.snapshot_id}'s known-at "
            f"time {iso_local(base.known_at)}; an update only adds records"
        )
    return None


def too_many(affected: int, base: Snapshot, share: float | None) -> str | None:
    """Why rescoring ``affected`` subjects is not worth it (a full score is as fast), or None.

    ``share`` None never gives up on an update.

    >>> t = dt.datetime(2026, 10, 31)
    >>> print(too_many(300, Snapshot(4, "2026.1", t, t, t, 1000), 0.25))
    300 of the 1,000 subjects of snapshot 4 (30 %) have changes since it, more than 25 %; a full score is as fast
    """  # noqa: E501
    if share is None or affected <= share * base.subjects:
        return None
    return (
        f"{affected:,} of the {base.subjects:,} subjects of snapshot {base.snapshot_id} "
        f"({100 * affected / max(base.subjects, 1):.0f} %) have changes since it, more than "
        f"{100 * share:.0f} %; a full score is as fast"
    )


@functools.lru_cache(maxsize=64)
def shift_days(months: int, days: int) -> tuple[int, int]:
    """Bounds (lo, hi) in days on ``f(x) - x`` for ``f(x) = x + months + days``, any x.

    Months are added first and a day past the month's end is clamped to its last day (at most
    3 days lost), then days are added; the time of day is kept. So the shift is the distance
    between first days of months, minus at most 3, plus ``days``. The distance is taken over a
    whole 400-year Gregorian cycle, which covers every calendar.

    >>> shift_days(12, 0)
    (362, 366)
    >>> shift_days(0, 180)
    (180, 180)
    """
    if months == 0:
        return days, days
    spans = set()
    for year in range(2000, 2400):
        for month in range(12):
            index = month + months
            end = dt.date(year + index // 12, index % 12 + 1, 1)
            spans.add((end - dt.date(year, month + 1, 1)).days)
    return min(spans) - 3 + days, max(spans) + days


def horizons(rb: Rulebook) -> dict[str, int | None]:
    """Days after which a record of each kind can no longer change any answer (None: never).

    A record matters at T only while one of its clocks runs: a rule's ``valid_for`` (it still
    counts), a decision listing's ``duration`` (it is the decision, or the settlement that ends
    it), or a conduct listing's ``within`` plus ``duration`` (it can still be in the window of an
    instance that runs at T). Everything in the plan compares those ends with T as "> T", so a
    record whose every clock ended by one month-end is inert at every later one. Merit caps only
    see records still counting. A record past its horizon still makes its subject part of the
    population (scored at the base): the lab scores a resident left with no record exactly so,
    and an update carries its base's population forward. Calendar durations are bounded above
    in days (:func:`shift_days`), so the horizon errs on keeping records.

    >>> from civiscore.rulebook.load import demo_rulebook_path, load
    >>> horizons(load(demo_rulebook_path()))["transport.fare_evasion"]  # P12M within + P180D
    546
    """

    def days(d: Duration | None) -> int | None:
        return None if d is None else shift_days(d.months, d.days)[1]

    out: dict[str, int | None] = {}

    def extend(kind: str, span: int | None) -> None:
        if kind in out and out[kind] is None:
            return
        out[kind] = None if span is None else max(out.get(kind) or 0, span)

    for rule in rb.rules:
        extend(rule.kind, days(rule.valid_for))
    for lst in rb.listings:
        trig = lst.trigger
        span = days(lst.duration)
        if trig.decision is not None:
            extend(trig.decision, span)
            if lst.ended_by is not None:
                extend(lst.ended_by.kind, span)
        if trig.conduct is not None:
            within = days(trig.conduct.within)
            extend(trig.conduct.kind, None if span is None or within is None else span + within)
    return out


def clocks(rb: Rulebook) -> list[tuple[str, Duration]]:
    """Every (kind, duration) whose end, counted from a record's occurrence, can change a row.

    Rule validity (``valid_for``) and the duration of decision- and conduct-triggered
    listings. Band-triggered redlists have no clock of their own.
    """
    out: dict[tuple[str, int, int], Duration] = {}
    for rule in rb.rules:
        if rule.valid_for is not None:
            out[(rule.kind, rule.valid_for.months, rule.valid_for.days)] = rule.valid_for
    for listing in rb.listings:
        kind = listing.trigger.decision or (
            listing.trigger.conduct.kind if listing.trigger.conduct else None
        )
        if kind is not None and listing.duration is not None:
            out[(kind, listing.duration.months, listing.duration.days)] = listing.duration
    return [(kind, d) for (kind, _, _), d in sorted(out.items(), key=lambda kv: kv[0])]


def reach_days(rb: Rulebook) -> int:
    """Days after a record's occurrence by which every clock of ``rb`` has ended (an upper
    bound for calendar durations, :func:`shift_days`); 0 for a rulebook without clocks.

    >>> from civiscore.rulebook.load import demo_rulebook_path, load
    >>> reach_days(load(demo_rulebook_path()))  # P3Y
    1096
    """
    return max((shift_days(d.months, d.days)[1] for _, d in clocks(rb)), default=0)


def timeline_since(rb: Rulebook, at: dt.datetime) -> dt.datetime:
    """The moment after which the records by occurrence (:mod:`civiscore.store.timeline`) made
    for an update from a base at ``at`` keep records: no clock of ``rb`` that ends after
    ``at`` started by it. The calendar's first moment when that is before it."""
    try:
        return at - dt.timedelta(days=reach_days(rb) + 1)
    except OverflowError:
        return dt.datetime.min


def _clock_ends_sql(
    rb: Rulebook,
    T1: dt.datetime,
    T2: dt.datetime,
    K2: str,
    columns: str,
    bound: str,
    timeline: Coverage | None,
) -> list[str]:
    """One query per distinct duration: records whose clock ends in (T1, T2]. ``timeline``:
    what :mod:`civiscore.store.timeline` covers, searched there where it can (None: no such
    table)."""
    by_duration: dict[tuple[int, int], list[str]] = {}
    for kind, d in clocks(rb):
        by_duration.setdefault((d.months, d.days), []).append(kind)
    parts = []
    for (months, days), kinds in sorted(by_duration.items()):
        lo, hi = shift_days(months, days)
        # The exact test needs calendar arithmetic on every row; the window on occurred_at is
        # implied by it (x + lo <= f(x) <= x + hi) and cheap, so only a few days of records
        # reach the exact test.
        earliest = T1 - dt.timedelta(days=hi)
        since = sql_timestamp(earliest)
        until = sql_timestamp(T2 - dt.timedelta(days=lo))
        by_time = timeline_sql(timeline, earliest)
        end = f"occurred_at + {interval(Duration(months=months, days=days, text=''))}"
        names = ", ".join("'" + k.replace("'", "''") + "'" for k in kinds)
        parts.append(
            f"""SELECT {columns} FROM {by_time}
            WHERE occurred_at > {since} AND occurred_at <= {until} AND retracts IS NULL
              AND kind IN ({names}) AND received_at <= {K2}{bound}
              AND {end} > {sql_timestamp(T1)} AND {end} <= {sql_timestamp(T2)}"""
        )
    return parts


def window_sql(base: Snapshot, at: dt.datetime, known_at: dt.datetime) -> tuple[str, str]:
    """The conditions on a record of cases (a), received in (K1, K2], and (d), occurring in
    (T1, T2] and received by K2, between ``base`` and (at, known_at)."""
    T1, T2 = sql_timestamp(base.at), sql_timestamp(at)
    K1, K2 = sql_timestamp(base.known_at), sql_timestamp(known_at)
    return (
        f"received_at > {K1} AND received_at <= {K2}",
        f"occurred_at > {T1} AND occurred_at <= {T2} AND received_at <= {K2}",
    )


def changes_sql(
    rb: Rulebook,
    base: Snapshot,
    records_seen: int | None,
    at: dt.datetime,
    known_at: dt.datetime,
    columns: str = "sid",
    upto: int | None = None,
    timeline: Coverage | None = None,
    disjoint: bool = False,
) -> list[str]:
    """SELECTs of ``columns`` of the records behind cases (a)-(d): each subject with one is
    affected, and no other record's contribution can differ between ``base`` and (at, known_at).

    The first two are cases (a) and (d) of :func:`window_sql`. ``disjoint`` leaves out of each
    part the records of (a) and (d) an earlier part has, so that only the later parts (the
    clocks that end, a few thousand records) can repeat a record: a day's records are both
    received and dated that day, and dropping 600,000 repeats afterwards took a grouping of
    1.3 million rows (0.15-0.3 s at Beijing's size).
    ``upto`` keeps only the records below that rowid (those an update has counted).
    ``timeline`` is what the store's table of records by occurrence covers
    (:func:`civiscore.store.timeline.covered`); the searches by occurrence read it where it can.
    """
    K2 = sql_timestamp(known_at)
    bound = "" if upto is None else f" AND rowid < {int(upto)}"
    received, occurred = window_sql(base, at, known_at)
    not_a = f" AND NOT ({received})" if disjoint else ""
    neither = f" AND NOT ({received}) AND NOT ({occurred})" if disjoint else ""
    parts = [
        # (a) received since the base: new records, retractions, settlements.
        f"SELECT {columns} FROM records WHERE {received}{bound}",
        # (d) occurred since the base's T, though received earlier.
        f"SELECT {columns} FROM records WHERE {occurred}{bound}{not_a}",
    ]
    if records_seen is not None:
        # (a) stored after the base's plan read the table, whatever their received_at.
        parts.append(
            f"SELECT {columns} FROM records WHERE rowid >= {int(records_seen)} "
            f"AND received_at <= {K2}{bound}{neither}"
        )
    # (b), (c) a validity window or a listing runs out.
    parts += _clock_ends_sql(rb, base.at, at, K2, columns, bound + neither, timeline)
    return parts


def affected_sql(
    rb: Rulebook,
    base: Snapshot,
    records_seen: int | None,
    at: dt.datetime,
    known_at: dt.datetime,
    timeline: Coverage | None = None,
) -> str:
    """The subjects whose rows may differ between ``base`` and (at, known_at): cases (a)-(d)."""
    parts = changes_sql(rb, base, records_seen, at, known_at, timeline=timeline)
    return "SELECT DISTINCT sid FROM (\n" + "\nUNION ALL\n".join(parts) + "\n) a"


def within_horizon_sql(
    rb: Rulebook, at: dt.datetime, kinds: Collection[str] | None = None
) -> list[str]:
    """Conditions on ``records``, one of which holds for every record (of ``kinds``, default
    all) still within its kind's horizon at ``at`` (:func:`horizons`); none for no kind."""
    limits = {k: d for k, d in horizons(rb).items() if kinds is None or k in kinds}
    finite = {kind: days for kind, days in limits.items() if days is not None}
    forever = sorted(kind for kind, days in limits.items() if days is None)

    def since(days: int) -> str:
        try:
            return sql_timestamp(at - dt.timedelta(days=days + 1))
        except OverflowError:  # T in the first centuries of the calendar: nothing is too old
            return "TIMESTAMP '0001-01-01 00:00:00'"

    def names(kinds: Sequence[str]) -> str:
        return ", ".join("'" + k.replace("'", "''") + "'" for k in kinds)

    parts: list[str] = []
    if finite:
        each = " OR ".join(
            f"(kind = '{k.replace(chr(39), chr(39) * 2)}' AND occurred_at > {since(d)})"
            for k, d in sorted(finite.items())
        )
        parts.append(f"occurred_at > {since(max(finite.values()))} AND ({each})")
    if forever:
        parts.append(f"kind IN ({names(forever)})")
    return parts


def still_matters_sql(
    rb: Rulebook, base: Snapshot, records_seen: int | None, at: dt.datetime
) -> str:
    """A condition on ``records`` true of every record an update must read for a subject.

    An update reruns the plan for the affected subjects, and a subject's rows at T2 depend only
    on its records within their kind's horizon (:func:`horizons`), on retractions (a retraction
    of a record that still counts may be dated anywhere), and on whether it is in the
    population at all. Subjects in the base's population stay there (the caller carries them);
    one that joins has a record received after K1, stored after the base's plan read the table,
    or occurring after T1, so those are read too. On the 5.2-million-resident city this keeps a
    quarter of the affected subjects' records, so fewer are copied and fewer go through the
    plan; the scan itself still reads the whole table.
    """
    parts = within_horizon_sql(rb, at)
    joins = [
        f"received_at > {sql_timestamp(base.known_at)}",
        f"occurred_at > {sql_timestamp(base.at)}",
    ]
    if records_seen is not None:
        joins.append(f"rowid >= {int(records_seen)}")
    parts.append(" OR ".join(joins))
    parts.append("retracts IS NOT NULL")
    return "(" + ")\n   OR (".join(parts) + ")"


def ensure_lineage(con: duckdb.DuckDBPyConnection) -> None:
    """Create the lineage table if this store does not have it yet.

    ``tallied`` says the snapshot stores the counts an update by tallies needs
    (:mod:`civiscore.engine.tallies`); snapshots written before those existed have NULL.
    """
    con.execute(_LINEAGE_DDL)
    con.execute(f"ALTER TABLE {LINEAGE} ADD COLUMN IF NOT EXISTS tallied BOOLEAN")


def records_seen(con: duckdb.DuckDBPyConnection) -> int:
    """How many rows ``records`` has now: the watermark a plan about to run will read."""
    row = first_row(con, "SELECT count(*) FROM records")
    assert row is not None
    return int(row[0])


def lineage_records_seen(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> int | None:
    """The watermark recorded for a snapshot, or None when it has no lineage row."""
    row = first_row(con, f"SELECT records_seen FROM {LINEAGE} WHERE snapshot_id = ?", [snapshot_id])
    return None if row is None else int(row[0])


def record_lineage(
    con: duckdb.DuckDBPyConnection,
    snapshot_id: int,
    base_snapshot_id: int | None,
    affected: int | None,
    seen: int,
) -> None:
    con.execute(
        f"INSERT INTO {LINEAGE} (snapshot_id, base_snapshot_id, affected_subjects, records_seen, "
        "tallied) VALUES (?, ?, ?, ?, true)",
        [snapshot_id, base_snapshot_id, affected, seen],
    )


def copy_unaffected_sql(table: str, snapshot_id: int, base_chain: Sequence[int]) -> str:
    """Copy a base snapshot's rows (``base_chain``: it and its bases, newest first) of the
    subjects not in ``affected`` into a new snapshot."""
    columns = SNAPSHOT_TABLES[table]
    return (
        f"INSERT INTO {table} SELECT {int(snapshot_id)}, {columns} "
        f"FROM {rows_sql(table, base_chain)} b WHERE sid NOT IN (SELECT sid FROM affected)"
    )
