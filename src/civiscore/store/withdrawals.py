"""Records withdrawn by a retraction, kept so a full score need not match every record against them.

A record is withdrawn at K once a record of the same department and subject received by K
retracts it (``retracts`` names its ``record_id``). The plan finds them by grouping every
retraction (``withdrawn``) and dropping the records they name from ``live`` with a join on
(department, record_id, sid). For everyone, that join reads and hashes two strings of every
record: at Beijing's size 5.3 s, and the grouping 1.2-3.9 s, of a 28 s full score.

Two tables keep the answer for the records below a watermark (``meta`` key
``withdrawals_upto``), like the locator (:mod:`civiscore.store.locator`):

* ``withdrawals``: one row per retracted (department, record_id, sid) with its first retraction
  by receipt, then id (``by_record``, ``known_since``). The ``withdrawn`` stage at any K is the
  rows with ``known_since <= K``: the first retraction received by K is the first of all when
  that one was received by K, and there is none otherwise.
* ``withdrawn_rows``: the ``rowid`` of every stored record such a key names, with the key's
  ``known_since``. ``live`` drops the rows received by K with an anti-join on ``rowid``, an
  integer.

Unlike the locator, rows above the watermark cannot be read as a tail here: a retraction among
them may withdraw any older record. So :func:`plan_tables` offers the tables only when they
cover every record, and the plan otherwise runs its own stages. Their readers, a full score and
a daily update (:mod:`civiscore.engine.tallies`, which also reads each withdrawn row's kind,
occurrence, quantity and receipt from ``withdrawn_rows``), fold the new records first
(:func:`fold_new`), and ingest folds after each department's file. A submission through the
service does not, because after one new record the fold took 0.08-0.1 s at Beijing's size, on
the path by which a submission reaches the decisions served.
"""

from __future__ import annotations

import duckdb

from civiscore.engine.plan import first_retractions_sql
from civiscore.store import locator, watermark

TABLE = "withdrawals"
ROWS = "withdrawn_rows"
_UPTO = "withdrawals_upto"

# Up to this many records that freshly retracted keys may name (by the locator's hashes), they
# are read by rowid; beyond it (a backfill of corrections), by one scan of their departments.
_LITERAL_ROWS = 10_000

_KEY = "department, record_id, sid"
# What a daily update needs of a record withdrawn since its base, kept so it need not fetch the
# rows from all over ``records`` (civiscore.engine.tallies).
_ROW_COLUMNS = "kind, occurred_at, quantity, retracts, received_at"


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables if the store has none (stores made before they existed).

    Tables from before ``withdrawn_rows`` carried the rows' content are dropped: they are
    derived, and the next fold rebuilds them from every record.
    """
    watermark.drop_if_lacking(con, ROWS, _UPTO, "kind", TABLE)
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            department VARCHAR NOT NULL,
            record_id VARCHAR NOT NULL,
            sid BIGINT NOT NULL,
            by_record VARCHAR NOT NULL,
            known_since TIMESTAMP NOT NULL
        );
        CREATE TABLE IF NOT EXISTS {ROWS} (
            row_id BIGINT NOT NULL,
            department VARCHAR NOT NULL,
            record_id VARCHAR NOT NULL,
            sid BIGINT NOT NULL,
            known_since TIMESTAMP NOT NULL,
            kind VARCHAR NOT NULL,
            occurred_at TIMESTAMP NOT NULL,
            quantity DOUBLE,
            retracts VARCHAR,
            received_at TIMESTAMP NOT NULL
        )"""
    )


def covered(con: duckdb.DuckDBPyConnection) -> int | None:
    """How many of the first records the tables cover; None when the store has none."""
    return watermark.covered(con, TABLE, _UPTO)


def plan_tables(con: duckdb.DuckDBPyConnection, records: str) -> tuple[str, str] | None:
    """(``withdrawals``, ``withdrawn_rows``) when they cover every record of ``records`` (the
    qualified name of the store's table), for :func:`civiscore.engine.plan.stages`; else None."""
    upto = covered(con)
    if upto is None:
        return None
    total = int(con.execute(f"SELECT count(*) FROM {records}").fetchall()[0][0])
    return (TABLE, ROWS) if total == upto else None


def fold_new(con: duckdb.DuckDBPyConnection) -> None:
    """Fold the records stored since the watermark into both tables (see
    :func:`civiscore.store.watermark.extend`)."""

    def fold(upto: int) -> None:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE withdrawals_new AS "
            + first_retractions_sql(f"rowid >= {int(upto)}")
        )
        if con.execute("SELECT count(*) FROM withdrawals_new").fetchall()[0][0]:
            _merge(con, upto)
        # Records stored now that a key names, whenever it was retracted.
        con.execute(
            f"""INSERT INTO {ROWS}
            SELECT r.row_id, w.department, w.record_id, w.sid, w.known_since, {_ROW_COLUMNS}
            FROM (SELECT rowid AS row_id, {_KEY}, {_ROW_COLUMNS} FROM records
                  WHERE rowid >= {int(upto)}) r
            JOIN {TABLE} w USING ({_KEY})"""
        )
        con.execute("DROP TABLE withdrawals_new")

    watermark.extend(con, TABLE, _UPTO, fold)


def _merge(con: duckdb.DuckDBPyConnection, upto: int) -> None:
    """Merge the retractions in ``withdrawals_new`` into both tables."""
    # Keys retracted for the first time: the older records they name join withdrawn_rows.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE withdrawals_fresh AS
        SELECT n.* FROM withdrawals_new n ANTI JOIN {TABLE} w USING ({_KEY})"""
    )
    # A key retracted again: keep whichever retraction came first.
    earlier = (
        "(n.known_since < w.known_since OR (n.known_since = w.known_since "
        "AND n.by_record < w.by_record))"
    )
    con.execute(
        f"""UPDATE {TABLE} w SET by_record = n.by_record, known_since = n.known_since
        FROM withdrawals_new n
        WHERE w.department = n.department AND w.record_id = n.record_id AND w.sid = n.sid
          AND {earlier}"""
    )
    con.execute(
        f"""UPDATE {ROWS} w SET known_since = n.known_since
        FROM withdrawals_new n
        WHERE w.department = n.department AND w.record_id = n.record_id AND w.sid = n.sid
          AND n.known_since < w.known_since"""
    )
    con.execute(f"INSERT INTO {TABLE} SELECT * FROM withdrawals_fresh")
    older = _older_records(con, upto)
    con.execute(
        f"""INSERT INTO {ROWS}
        SELECT r.row_id, f.department, f.record_id, f.sid, f.known_since, {_ROW_COLUMNS}
        FROM ({older}) r JOIN withdrawals_fresh f USING ({_KEY})"""
    )
    con.execute("DROP TABLE withdrawals_fresh")


def _older_records(con: duckdb.DuckDBPyConnection, upto: int) -> str:
    """A SELECT of (row_id, department, record_id, sid, and the columns a daily update
    needs) of the records below ``upto`` that a freshly retracted key may name (the caller
    joins on the key): found by the locator's hashes of their ids, else by a scan."""
    fresh = int(con.execute("SELECT count(*) FROM withdrawals_fresh").fetchall()[0][0])
    if fresh == 0:
        return f"SELECT row_id, {_KEY}, {_ROW_COLUMNS} FROM {ROWS} WHERE false"
    keyed = locator.keyed_sql(con, "withdrawals_fresh")
    if keyed is not None:
        rowids = [int(r[0]) for r in con.execute(keyed).fetchall()]
        if len(rowids) <= _LITERAL_ROWS:
            # Constant rowids: DuckDB reads only the row groups that hold them (a join would
            # push only their range, all of the table for keys from all over it).
            listed = ", ".join(str(r) for r in rowids) or "NULL"
            return f"""SELECT rowid AS row_id, {_KEY}, {_ROW_COLUMNS} FROM records
                WHERE rowid IN ({listed}) AND rowid < {int(upto)}"""
    # Departments are stored file by file, so other departments' row groups are skipped by zone
    # map: the departments are written as constants, which DuckDB tests against the zone maps
    # (a subquery it does not).
    departments = ", ".join(
        "'" + str(r[0]).replace("'", "''") + "'"
        for r in con.execute("SELECT DISTINCT department FROM withdrawals_fresh").fetchall()
    )
    return f"""SELECT rowid AS row_id, {_KEY}, {_ROW_COLUMNS} FROM records
        WHERE rowid < {int(upto)} AND department IN ({departments})
          AND sid IN (SELECT sid FROM withdrawals_fresh)"""
