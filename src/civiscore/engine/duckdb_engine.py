"""Run the scoring plan on the embedded DuckDB store."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Collection, Mapping, Sequence

import duckdb
import pyarrow as pa

from civiscore.engine import tallies
from civiscore.engine.incremental import (
    FULL_SCORE_SHARE,
    SNAPSHOT_TABLES,
    Update,
    affected_sql,
    copy_unaffected_sql,
    ensure_lineage,
    lineage_records_seen,
    record_lineage,
    records_seen,
    still_matters_sql,
    timeline_since,
    too_many,
    why_full,
)
from civiscore.engine.plan import reads_population, spent_after, stages, tables_read
from civiscore.rulebook.load import refuse_simulation_only
from civiscore.rulebook.model import Rulebook
from civiscore.store import firsts, locator, snapshots, timeline, withdrawals
from civiscore.store.base import Snapshot
from civiscore.store.duckdb_store import DuckDBStore, first_row
from civiscore.timeutil import now_local, sql_timestamp

# A snapshot's rows, from the plan's stage tables: ``$id`` is the new snapshot's number.
_FRESH: dict[str, str] = {
    "snapshot_scores": "SELECT $id AS snapshot_id, sid, score, band, band <> raw_band FROM scores",
    # For many subjects ``points`` already holds one total per subject and context.
    "snapshot_contexts": "SELECT $id AS snapshot_id, sid, context, points, records FROM points",
    "snapshot_listings": """SELECT $id AS snapshot_id, sid, listing, list, since, until,
                   record_id, department, reference
            FROM (SELECT * FROM decision_listings WHERE list = 'blacklist'
                  UNION ALL SELECT * FROM conduct_listings WHERE list = 'blacklist'
                  UNION ALL SELECT * FROM benefits)""",
    "snapshot_caps": """SELECT $id AS snapshot_id, sid, rule_no, cap_year, total, records
            FROM caps""",
}
assert set(_FRESH) == set(SNAPSHOT_TABLES)
# The stages those queries read.
_FRESH_READS = frozenset(name for sql in _FRESH.values() for name in tables_read(sql))


def build_stages(
    cur: duckdb.DuckDBPyConnection,
    rb: Rulebook,
    at: dt.datetime,
    known_at: dt.datetime,
    sid: int | Sequence[int] | None,
    population: str | None = None,
    retracted: tuple[str, str] | None = None,
    keep: Collection[str] | None = None,
) -> None:
    """Create every stage of the plan as a temporary table (or view) on ``cur``.

    ``keep`` given, stage tables that no later stage reads and ``keep`` does not name are
    dropped as soon as they are spent, which lowers a full score's peak memory.
    """
    plan = stages(rb, at, known_at, sid, population, retracted)
    spent = spent_after(plan, keep) if keep is not None else {}
    for stage in plan:
        kind = "VIEW" if stage.view else "TABLE"
        cur.execute(f"CREATE OR REPLACE TEMP {kind} {stage.name} AS {stage.sql}")
        for name in spent.get(stage.name, []):
            cur.execute(f"DROP TABLE {name}")


# Above this many affected subjects an update reads their records with one scan of the table.
_LOCATE_AT_MOST = 10_000


def _store_records(cur: duckdb.DuckDBPyConnection) -> str:
    """The store's own ``records`` table, by a name no temporary table can shadow."""
    row = first_row(cur, "SELECT current_database()")
    assert row is not None
    return f"{_quote(str(row[0]))}.main.records"


def population_sql(cur: duckdb.DuckDBPyConnection, at: dt.datetime, known_at: dt.datetime) -> str:
    """A SELECT of the store's population at (at, known_at): from each subject's first records,
    or (a store without that table) the distinct subjects of every record."""
    records = _store_records(cur)
    found = firsts.population_sql(cur, records, at, known_at)
    if found is not None:
        return found
    T, K = sql_timestamp(at), sql_timestamp(known_at)
    return f"SELECT DISTINCT sid FROM {records} WHERE received_at <= {K} AND occurred_at <= {T}"


def _count(cur: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = first_row(cur, f"SELECT count(*) FROM ({sql}) c")
    assert row is not None
    return int(row[0])


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DuckDBEngine:
    """Set-based engine: each stage of the plan becomes a temporary table on a cursor.

    A cursor has its own temporary schema, so questions asked side by side don't collide.
    """

    def __init__(self, store: DuckDBStore):
        self.store = store

    def evaluate(
        self,
        rb: Rulebook,
        at: dt.datetime,
        known_at: dt.datetime,
        sid: int | Sequence[int] | None = None,
        keep: Collection[str] | None = None,
    ) -> duckdb.DuckDBPyConnection:
        """Build every stage for (T, K[, subjects]); returns the cursor holding them.

        ``keep``, for everyone, names the stages wanted afterwards; the others are dropped once
        spent (see :func:`build_stages`).
        """
        cur = self.store.con.cursor()
        if sid is None:
            # Everyone: the population from each subject's first records, not every record.
            population = population_sql(cur, at, known_at)
            retracted = withdrawals.plan_tables(cur, _store_records(cur))
            build_stages(
                cur, rb, at, known_at, None, population=population, retracted=retracted, keep=keep
            )
            return cur
        # A few subjects: their records only, found through the locator, shadow the store's
        # table on this cursor (its temporary schema is searched first).
        sql = locator.subjects_records_sql(
            cur, _store_records(cur), [sid] if isinstance(sid, int) else sid
        )
        if sql is not None:
            cur.execute(f"CREATE TEMP TABLE records AS {sql}")
        build_stages(cur, rb, at, known_at, sid)
        return cur

    def score(
        self,
        rb: Rulebook,
        at: dt.datetime,
        known_at: dt.datetime,
        created_at: dt.datetime | None = None,
    ) -> Snapshot:
        """Materialise scores, bands and active listings for the whole population.

        The snapshot's scores hold a row for each subject whose row differs from the base's
        default (:func:`civiscore.engine.plan.default_row`); ``subjects`` counts them all.
        """
        # A snapshot is what decisions are served from; a simulation-only rulebook never gets one.
        refuse_simulation_only(rb, "scoring into a snapshot")
        ensure_lineage(self.store.con)
        # Records stored some other way, or whose fold was cut short, are read as the tail
        # anyway; folding them first keeps that tail short (a no-op when nothing is new). The
        # withdrawals tables are only read when they cover every record.
        firsts.fold_new(self.store.con)
        withdrawals.fold_new(self.store.con)
        seen = records_seen(self.store.con)  # before the plan reads the records
        cur = self.evaluate(rb, at, known_at, keep=_FRESH_READS)
        try:
            # Its scores hold only the rows that differ from the base's (plan._scores_sql).
            subjects = _count(cur, "SELECT sid FROM population")
            return _new_snapshot(cur, rb, at, known_at, created_at, seen, _FRESH, subjects)
        finally:
            cur.close()

    def store_snapshot(
        self,
        rb: Rulebook,
        at: dt.datetime,
        known_at: dt.datetime,
        rows: Mapping[str, pa.Table],
        seen: int,
        created_at: dt.datetime | None = None,
        subjects: int | None = None,
    ) -> Snapshot:
        """Write a population snapshot computed elsewhere (by the Spark engine) into the store.

        Args:
            rb: The rulebook it was scored under.
            at: T.
            known_at: K.
            rows: For each of ``snapshot_scores``, ``snapshot_contexts``,
                ``snapshot_listings`` and ``snapshot_caps``, its rows without the snapshot
                number, columns in the table's order
                (:data:`civiscore.engine.incremental.SNAPSHOT_TABLES`).
            seen: How many rows ``records`` had when the records were read
                (:func:`civiscore.engine.incremental.records_seen`): an incremental score
                can then bring this snapshot forward like one of this engine's.
            created_at: When it was made (default: now).
            subjects: Its population's count, as the engine that computed it found it (its
                scores leave out the members at the base's default); None: this store's
                population at (at, known_at).
        """
        if set(rows) != set(SNAPSHOT_TABLES):
            raise ValueError(f"a snapshot has {sorted(SNAPSHOT_TABLES)}, not {sorted(rows)}")
        ensure_lineage(self.store.con)
        cur = self.store.con.cursor()
        try:
            for table, arrow in rows.items():
                cur.register(f"incoming_{table}", arrow)
            inserts = {
                table: f"SELECT $id, {columns} FROM incoming_{table}"
                for table, columns in SNAPSHOT_TABLES.items()
            }
            if subjects is None:
                # The same plan's scores hold only the rows that differ from the base's.
                subjects = _count(cur, population_sql(cur, at, known_at))
            return _new_snapshot(cur, rb, at, known_at, created_at, seen, inserts, subjects)
        finally:
            cur.close()

    def update(
        self,
        rb: Rulebook,
        base: Snapshot | None,
        at: dt.datetime,
        known_at: dt.datetime,
        created_at: dt.datetime | None = None,
        timings: dict[str, float] | None = None,
        full_share: float | None = FULL_SCORE_SHARE,
    ) -> Update:
        """Bring snapshot ``base`` forward to (at, known_at): rescore only affected subjects.

        The result equals :meth:`score` at (at, known_at) row for row; see
        :mod:`civiscore.engine.incremental` for why. When ``base`` cannot be brought forward
        (none, another rulebook version, or an earlier ``at`` or ``known_at``), the whole
        population is scored and :attr:`Update.full_reason` says why; likewise when more than
        ``full_share`` of the base's subjects are affected, where a full score is as fast (None:
        never).
        ``timings``, when given, receives the seconds spent in each step (for benchmarks).
        """
        refuse_simulation_only(rb, "scoring into a snapshot")
        clock = _Stopwatch(timings)
        reason = why_full(base, rb.version, at, known_at)
        if reason is None and base is not None:
            ensure_lineage(self.store.con)
            # Tallies drop withdrawn records with the store's tables, which must cover every
            # record counted.
            withdrawals.fold_new(self.store.con)
            clock.lap("fold withdrawals")
            # Records by occurrence, where today's ending clocks are found (made on the first
            # update of a store, from the records whose clocks can still end after the base;
            # after that, ingest keeps it current).
            timeline.bring_to(self.store.con, timeline_since(rb, base.at))
            clock.lap("fold timeline")
            cur = self.store.con.cursor()
            try:
                seen = records_seen(cur)  # before anything reads the records
                by_time = timeline.covered(cur)
                base_seen = lineage_records_seen(cur, base.snapshot_id)
                base_chain = snapshots.chain(cur, base.snapshot_id)
                not_tallies = tallies.why_not(cur, base, base_chain, base_seen, seen)
                if not_tallies is None:
                    assert base_seen is not None
                    affected = tallies.find_changes(
                        cur, rb, base, base_seen, seen, at, known_at, by_time
                    )
                else:
                    affected = _affected(cur, rb, base, at, known_at, by_time)
                clock.lap("affected subjects")
                reason = too_many(affected, base, full_share)
                if reason is None:
                    created = created_at or now_local()
                    # Scores list only the rows that differ from the base's (plan._scores_sql),
                    # so the population is counted, not carried forward from the base's rows;
                    # unless no changed record can have brought anyone into it. Finding it reads
                    # every subject's first records when their zone maps cannot place everyone,
                    # so it is not looked for when neither the count nor the benefits read it.
                    joined = not_tallies is not None or tallies.joined_any(cur, base, at, known_at)
                    population = (
                        population_sql(cur, at, known_at)
                        if joined or reads_population(rb)
                        else None
                    )
                    theirs = (
                        None
                        if population is None
                        else f"SELECT sid FROM ({population}) p "
                        "WHERE sid IN (SELECT sid FROM affected)"
                    )
                    if not_tallies is None:
                        assert base_seen is not None
                        tallies.rescore(
                            cur, rb, base, base_chain, base_seen, seen, at, known_at, theirs
                        )
                        clock.lap("tallies")
                    else:
                        assert theirs is not None
                        _rescore(cur, rb, base, base_chain, at, known_at, affected, theirs, clock)
                    subjects = base.subjects
                    if joined:
                        assert population is not None
                        subjects = _count(cur, population)
                    clock.lap("count subjects")
                    snapshot = _write_update(
                        cur,
                        rb,
                        base,
                        base_chain,
                        at,
                        known_at,
                        created,
                        subjects,
                        affected,
                        seen,
                        clock,
                    )
                    how = "tallies" if not_tallies is None else "records"
                    return Update(snapshot, base.snapshot_id, affected, None, how, not_tallies)
            finally:
                cur.close()
        return Update(self.score(rb, at, known_at, created_at), None, None, reason, "full", None)


def _affected(
    cur: duckdb.DuckDBPyConnection,
    rb: Rulebook,
    base: Snapshot,
    at: dt.datetime,
    known_at: dt.datetime,
    by_time: timeline.Coverage | None,
) -> int:
    """Create the temporary table ``affected`` on ``cur``; returns how many subjects it holds."""
    seen = lineage_records_seen(cur, base.snapshot_id)
    cur.execute(
        "CREATE TEMP TABLE affected AS " + affected_sql(rb, base, seen, at, known_at, by_time)
    )
    row = first_row(cur, "SELECT count(*) FROM affected")
    assert row is not None
    return int(row[0])


def _rescore(
    cur: duckdb.DuckDBPyConnection,
    rb: Rulebook,
    base: Snapshot,
    base_chain: Sequence[int],
    at: dt.datetime,
    known_at: dt.datetime,
    affected: int,
    population: str,
    clock: _Stopwatch,
) -> None:
    """Run the plan for the ``affected`` subjects (in the table of that name) over all of their
    records that can still matter: the stages the new snapshot is written from. ``population``
    is a SELECT of theirs at (at, known_at), which those records alone may not show."""
    # The plan reads the table ``records``; on this cursor a temporary table of that name (the
    # temporary schema is searched first) holds only the affected subjects' records, found
    # through the locator. The population plan over it is the plan for that set of subjects
    # (``stages(..., sid=[...])``) without an SQL IN list of every sid, which DuckDB binds
    # slowly when it is long (see "Incremental scoring" in docs/benchmarks.md).
    store_records = _store_records(cur)
    located = (
        locator.subjects_records_sql(cur, store_records, "affected")
        if affected <= _LOCATE_AT_MOST
        else None  # so many subjects that their records are a scan's worth anyway
    )
    if located is not None:
        their = located
    else:
        # Only the records that can still matter, so fewer are copied and go through the plan.
        # Membership of the population comes from each subject's first records (``population``),
        # so records kept for nothing but membership are not needed.
        base_seen = lineage_records_seen(cur, base.snapshot_id)
        their = (
            f"SELECT * FROM {store_records} WHERE sid IN (SELECT sid FROM affected) "
            f"AND ({still_matters_sql(rb, base, base_seen, at)})"
        )
    cur.execute(f"CREATE TEMP TABLE records AS {their}")
    clock.lap("their records")
    build_stages(cur, rb, at, known_at, None, population=population)
    clock.lap("plan stages")


def _write_update(
    cur: duckdb.DuckDBPyConnection,
    rb: Rulebook,
    base: Snapshot,
    base_chain: Sequence[int],
    at: dt.datetime,
    known_at: dt.datetime,
    created: dt.datetime,
    subjects: int,
    affected: int,
    seen: int,
    clock: _Stopwatch,
) -> Snapshot:
    """Write the new snapshot of ``subjects`` from the stages on ``cur`` for the subjects in
    ``affected``.

    ``seen`` is how many rows ``records`` had before anything was read, for the lineage.
    """
    # Stored as a delta on the base (only the affected subjects' rows), unless the base's chain
    # is due to be consolidated: then every subject's rows, the others' copied from the base.
    link = snapshots.link_for(cur, base.snapshot_id, base.subjects, affected)
    cur.execute("BEGIN TRANSACTION")
    try:
        snapshot_id = _next_snapshot_id(cur)
        for table, sql in _FRESH.items():
            if link is None:
                cur.execute(copy_unaffected_sql(table, snapshot_id, base_chain))
                clock.lap("copy unaffected rows")
            # The stages hold the affected subjects' rows only: both ways of rescoring read
            # nothing of anyone else (the property tests would see their rows twice).
            cur.execute(f"INSERT INTO {table} {sql}", {"id": snapshot_id})
            clock.lap("write fresh rows")
        if link is not None:
            snapshots.record_delta(cur, snapshot_id, link, "affected")
        _write_snapshot(cur, snapshot_id, rb, at, known_at, created, subjects)
        record_lineage(cur, snapshot_id, base.snapshot_id, affected, seen)
        cur.execute("COMMIT")
        clock.lap("commit")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return Snapshot(snapshot_id, rb.version, at, known_at, created, subjects)


class _Stopwatch:
    """Adds the seconds since the previous lap to a named step, when asked to keep time."""

    def __init__(self, into: dict[str, float] | None):
        self.into = into
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[step] = self.into.get(step, 0.0) + now - self.last
        self.last = now


def _new_snapshot(
    cur: duckdb.DuckDBPyConnection,
    rb: Rulebook,
    at: dt.datetime,
    known_at: dt.datetime,
    created_at: dt.datetime | None,
    seen: int,
    inserts: Mapping[str, str],
    subjects: int,
) -> Snapshot:
    """Number a new snapshot of ``subjects`` and fill it in one transaction: each table from its
    SELECT."""
    created = created_at or now_local()
    cur.execute("BEGIN TRANSACTION")
    try:
        snapshot_id = _next_snapshot_id(cur)
        for table, sql in inserts.items():
            cur.execute(f"INSERT INTO {table} {sql}", {"id": snapshot_id})
        _write_snapshot(cur, snapshot_id, rb, at, known_at, created, subjects)
        record_lineage(cur, snapshot_id, None, None, seen)
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return Snapshot(snapshot_id, rb.version, at, known_at, created, subjects)


def _next_snapshot_id(cur: duckdb.DuckDBPyConnection) -> int:
    row = first_row(cur, "SELECT coalesce(max(snapshot_id), 0) + 1 FROM snapshots")
    assert row is not None
    return int(row[0])


def _write_snapshot(
    cur: duckdb.DuckDBPyConnection,
    snapshot_id: int,
    rb: Rulebook,
    at: dt.datetime,
    known_at: dt.datetime,
    created: dt.datetime,
    subjects: int,
) -> None:
    """Write the snapshot's own row once its subjects' rows are in: ``subjects`` is its
    population, which its scores do not list in full (plan._scores_sql)."""
    cur.execute(
        "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?)",
        [snapshot_id, rb.version, at, known_at, created, subjects],
    )
