"""Where each subject's records are, so a question about a few subjects reads only theirs.

Records are stored in arrival order: one subject's records are spread over the whole table, and
a plan for a few subjects (a submission's refresh, an explanation, a decision from the records,
an incremental score) would scan every record to find them. The locator,
``records_by_subject(sid, row_id)``, holds each record's subject and ``rowid``, sorted by
subject within each ingest, so DuckDB's zone maps find a subject's entries in a few row groups;
the records are then read by ``rowid``, which DuckDB also finds by zone map.

``records`` is append-only, so rowids never move. The locator covers the rows below a
watermark (``meta`` key ``records_by_subject_upto``) and :func:`index_new` extends it after
each transaction that stores records. Rows stored some other way (the policy lab's stores, a store
written before the locator existed) lie above the watermark and are found by a scan of just
that tail, so an answer never depends on whether they were indexed.

Each entry also holds a 32-bit hash of the record's (department, record_id), its ``key``. A
retraction names the record it withdraws by those two strings and its subject; finding the
records a day's 3,000 retractions name read the strings of every record of their subjects'
departments (5.5 s at Beijing's size, on ingest's path). Through the locator it reads two
integer columns, and the strings of only the rows whose hash matches (:func:`keyed_sql`).
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from civiscore.store import watermark

TABLE = "records_by_subject"
_UPTO = "records_by_subject_upto"

# Beyond this many records, reading them by rowid costs more than one scan of the table
# (measured: 173,000 rows of 4,643 subjects, and 3.3 million of 302,000, out of 9.5 million).
_MAX_LOCATED = 50_000
# Up to this many, the rowids are written into the query as constants (measured at 209 million
# records: a submission's refresh took 0.62 s this way, 1.03 s through the join).
_LITERAL_ROWS = 2_000


def key_sql(department: str, record_id: str) -> str:
    """The hash the locator keeps of a record's (department, record_id), as SQL."""
    return f"CAST(hash({department}, {record_id}) >> 32 AS UINTEGER)"


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    """Create the locator if the store has none (stores made before it existed).

    A locator from before it kept each record's ``key`` is dropped; it is derived, and the
    next transaction that stores records rebuilds it from every record.
    """
    watermark.drop_if_lacking(con, TABLE, _UPTO, "key")
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} "
        "(sid BIGINT NOT NULL, row_id BIGINT NOT NULL, key UINTEGER NOT NULL)"
    )


def covered(con: duckdb.DuckDBPyConnection) -> int | None:
    """How many of the first records the locator covers; None when the store has no locator."""
    return watermark.covered(con, TABLE, _UPTO)


def index_new(con: duckdb.DuckDBPyConnection) -> None:
    """Add the records stored since the watermark (see :func:`civiscore.store.watermark.extend`)."""

    def fold(upto: int) -> None:
        # By subject only: the order of one subject's entries does not matter to the zone maps,
        # and a sort on one key took 11.2-11.3 s for the 114 million records of Beijing's civil
        # affairs file, against 12.3-12.9 s on two.
        con.execute(
            f"INSERT INTO {TABLE} SELECT sid, rowid, {key_sql('department', 'record_id')} "
            f"FROM records WHERE rowid >= {upto} ORDER BY sid"
        )

    watermark.extend(con, TABLE, _UPTO, fold)


def subjects_records_sql(
    con: duckdb.DuckDBPyConnection,
    records: str,
    sids: Sequence[int] | str,
    *,
    with_rowid: bool = False,
) -> str | None:
    """A SELECT of every record of ``sids`` through the locator.

    None when the store has no locator, or when the subjects have so many records that one scan
    of the table (the caller's fallback) is cheaper.

    ``records`` is the qualified name of the store's table (the caller may shadow ``records``
    with a temporary table made from this query). ``sids`` is a list of subjects or the name
    of a one-column relation of them. ``with_rowid`` adds each record's ``rowid`` as a first
    column, ``row_id``.
    """
    upto = covered(con)
    if upto is None:
        return None
    if isinstance(sids, str):
        wanted = f"SELECT * FROM {sids}"
    else:
        wanted = ", ".join(str(int(s)) for s in sids) or "NULL"
    # Entries at or above the watermark read here may come from an index_new that committed
    # after it was read; the tail reads those rows, so they are left to it.
    found = f"SELECT row_id FROM {TABLE} WHERE sid IN ({wanted}) AND row_id < {upto}"
    count = int(con.execute(f"SELECT count(*) FROM ({found})").fetchall()[0][0])
    if count > _MAX_LOCATED:
        return None
    columns = "rowid AS row_id, *" if with_rowid else "*"
    tail = f"SELECT {columns} FROM {records} WHERE rowid >= {upto} AND sid IN ({wanted})"
    if count == 0:
        return tail
    if count <= _LITERAL_ROWS:
        # Constant rowids: DuckDB checks each against the row groups' rowid ranges and reads
        # only the groups that hold them, however large the table.
        rowids = ", ".join(str(int(r[0])) for r in con.execute(found).fetchall())
        located = f"SELECT {columns} FROM {records} WHERE rowid IN ({rowids})"
    else:
        # A join pushes only the range of the wanted rowids into the scan: cheaper to bind than
        # a long constant list, but it reads every row group between them.
        located = (
            f"SELECT {'r.rowid AS row_id, ' if with_rowid else ''}r.* "
            f"FROM {records} r JOIN ({found}) l ON r.rowid = l.row_id"
        )
    return f"{located}\nUNION ALL\n{tail}"


def keyed_sql(con: duckdb.DuckDBPyConnection, keys: str) -> str | None:
    """A SELECT of the ``row_id`` of every record whose (department, record_id, sid) may be a
    key in relation ``keys`` (columns ``department``, ``record_id``, ``sid``): every record
    that is, and a few more whose hash collides; the caller joins on the key itself.

    None when the store has no locator.
    """
    upto = covered(con)
    if upto is None:
        return None
    return f"""SELECT row_id FROM {TABLE}
        WHERE row_id < {upto} AND sid IN (SELECT sid FROM {keys})
          AND key IN (SELECT {key_sql("department", "record_id")} FROM {keys})
        UNION ALL
        SELECT rowid FROM records
        WHERE rowid >= {upto} AND (department, record_id, sid) IN
            (SELECT department, record_id, sid FROM {keys})"""
