"""Records in order of occurrence, so a daily update finds the clocks that run out in a day.

Each day, some records stop counting and some listings end: a record of a kind whose rule is
valid for a year stops counting a year after it occurred (cases (b) and (c) of
:mod:`civiscore.engine.incremental`). Finding them is a search by ``occurred_at``, one per
distinct duration. ``records`` is stored in arrival order, and a department's history arrives
in whatever order its file has, so the search read 1,065 of 1,710 row groups for one duration
at Beijing's size, and four searches took 0.4-0.5 s of a 1.3 s update.

``records_by_time`` holds every record that is not a retraction (retractions have no clock),
with the columns an update reads of a changed record, sorted by ``occurred_at`` within each
fold: the same searches read 2-4 row groups. It covers the rows below a watermark (``meta`` key
``records_by_time_upto``) like the locator (:mod:`civiscore.store.locator`); readers take the
rows above it from ``records`` (:func:`relation_sql`), so an answer never depends on whether
the fold has run.

A store gets the table from its first daily update (:func:`bring_to`): one pass per calendar
year of occurrence, each sorting that year's records, so memory is bounded by a year's
records rather than all of them. Ingest folds each file into it once it exists.

It keeps only the records that occurred after a moment fixed when it is made (``meta`` key
``records_by_time_from``): the update's base T less the longest clock of the rulebook in force.
Updates only move forward, so no later day's clocks can end on an older record, and at
Beijing's size the table holds the last three of eight years: 82 million records, 1.3 GiB,
made in 18 s (of every record it took 3.3 GiB, as much as ``records`` itself, and 49 s). A
search that reaches further back (an update from an older base, a rulebook with a longer
clock) reads ``records`` instead (:meth:`Coverage.serves`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from civiscore.store import watermark
from civiscore.timeutil import sql_timestamp

TABLE = "records_by_time"
_UPTO = "records_by_time_upto"
_FROM = "records_by_time_from"


@dataclass(frozen=True)
class Coverage:
    """What the table holds: every non-retraction with rowid below ``upto`` that occurred after
    ``since``."""

    upto: int
    since: dt.datetime

    def serves(self, after: dt.datetime) -> bool:
        """Whether a search for records that occurred after ``after`` may read the table."""
        return after >= self.since


# The columns of ``records`` kept, after ``rowid``; a retraction's ``retracts`` is never kept.
_COLUMNS = "sid, kind, occurred_at, quantity, received_at"


def covered(con: duckdb.DuckDBPyConnection) -> Coverage | None:
    """What the table covers; None when the store has none yet."""
    upto = watermark.covered(con, TABLE, _UPTO)
    if upto is None:
        return None
    row = con.execute("SELECT value FROM meta WHERE key = ?", [_FROM]).fetchall()
    return Coverage(upto, dt.datetime.fromisoformat(row[0][0]) if row else dt.datetime.min)


def _append(
    con: duckdb.DuckDBPyConnection, since: dt.datetime, lo: int, hi: int | None = None
) -> None:
    """Append the non-retractions with rowid in [lo, hi) that occurred after ``since``, in
    order of occurrence, a calendar year at a time (a year's sort at most is held; the years
    come in order)."""
    rows = f"rowid >= {int(lo)} AND occurred_at > {sql_timestamp(since)}" + (
        "" if hi is None else f" AND rowid < {int(hi)}"
    )
    years = [
        int(r[0])
        for r in con.execute(
            f"SELECT DISTINCT year(occurred_at) AS y FROM records WHERE {rows} ORDER BY y"
        ).fetchall()
    ]
    for year in years:
        con.execute(
            f"""INSERT INTO {TABLE}
            SELECT rowid AS row_id, {_COLUMNS} FROM records
            WHERE {rows} AND retracts IS NULL
              AND occurred_at >= make_timestamp({year}, 1, 1, 0, 0, 0)
              AND occurred_at < make_timestamp({year + 1}, 1, 1, 0, 0, 0)
            ORDER BY occurred_at"""
        )


def bring_to(con: duckdb.DuckDBPyConnection, since: dt.datetime) -> None:
    """Make the table cover every stored record: create it with the records that occurred after
    ``since`` (one pass per year of occurrence) if the store has none, else fold in the rows
    stored since its watermark (after the moment it was made with)."""
    if covered(con) is not None:
        fold_new(con)
        return
    con.execute("BEGIN TRANSACTION")
    try:
        total = int(con.execute("SELECT count(*) FROM records").fetchall()[0][0])
        con.execute(
            f"""CREATE TABLE {TABLE} (
                row_id BIGINT NOT NULL,
                sid BIGINT NOT NULL,
                kind VARCHAR NOT NULL,
                occurred_at TIMESTAMP NOT NULL,
                quantity DOUBLE,
                received_at TIMESTAMP NOT NULL
            )"""
        )
        _append(con, since, 0, total)
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_FROM, since.isoformat()])
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [_UPTO, str(total)])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def fold_new(con: duckdb.DuckDBPyConnection) -> None:
    """Fold the rows stored since the watermark, if the store has the table (ingest's call)."""
    now = covered(con)
    if now is not None:
        watermark.extend(con, TABLE, _UPTO, lambda upto: _append(con, now.since, upto))


def relation_sql(coverage: Coverage | None, after: dt.datetime, records: str = "records") -> str:
    """A relation named ``records`` for a search of the records that occurred after ``after``.

    When the table serves it: the non-retractions of ``records`` with the columns the table
    keeps, ``retracts`` (NULL) and ``rowid`` as a column; the table below its watermark,
    ``records`` above it. Otherwise (no table, or the search reaches before it): ``records``
    itself, every row, which the caller narrows as it would have anyway.
    """
    if coverage is None or not coverage.serves(after):
        return records
    upto = int(coverage.upto)
    return f"""(SELECT row_id AS rowid, {_COLUMNS}, NULL::VARCHAR AS retracts FROM {TABLE}
         WHERE row_id < {upto}
         UNION ALL
         SELECT rowid, {_COLUMNS}, retracts FROM {records}
         WHERE rowid >= {upto} AND retracts IS NULL) records"""
